"""Workflows: steps of tasks with dependencies and data between them, run with progress.

    from scitq.workflow import Workflow
    wf = Workflow("wordcount", output="file:///tmp/wc-out", retries=1)
    for i, path in enumerate(files):
        m = wf.step("map", f"wc -w < $INPUT/{path.name} > $OUTPUT/count-{i}.txt",
                    inputs=[f"file://{path}"], concurrency=4)
        c = wf.step("check", "test -s $INPUT/count-*.txt && cp $INPUT/* $OUTPUT/", inputs=m)
    r = wf.step("total", "cat $INPUT/*.txt | paste -sd+ | bc > $OUTPUT/total.txt",
                inputs=c.gather())
    wf.run()        # submits, then draws one progress bar per step until all is done
    wf.clean()      # deletes the workflow's batches, tasks and logs on the server

A step is a name; every `wf.step(name, ...)` call adds one iteration (one task) to it and
returns a handle. Each step is one batch on the server, named "<workflow>.<step>", so
`scitq batch list` shows a workflow's progress step by step.

- `inputs`: URIs (downloaded into $INPUT), handles (that iteration's output folder),
  `handle.gather()` (the output folders of every iteration of that step declared so far),
  or lists of them. A handle used as an input is also a dependency: its data must exist.
- `depends_on`: handles, gathers or lists of them; the task waits until they succeeded
  and is canceled if one fails for good.
- `output`: where $OUTPUT is uploaded; by default "<workflow output>/<step>/<n>/".
- container, container_options, resources, retries, retry_delay, timeout, use_cache,
  shell: passed to the task; unset ones take the Workflow's defaults.
- `concurrency`: at most this many tasks of the step run at once, over all workers.

Nothing reaches the server before `run()` (or `submit()`): then each step is sent in one
request, in dependency order, so that handles become the task ids the next steps wait for.
The step output folders are left alone by `clean()`: they are the results.

Needs only httpx and rich (never the server's packages).
"""
import re
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from scitq.client import Client
from scitq.errors import Conflict, NotFound, ScitqError

# The server's rule for batch names (scitq/server/task_store.py), checked here so that a bad
# step name fails at the line that declares it rather than at submission.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+@:=-]*$")
_SHOWN_FAILURES = 5


class WorkflowFailed(ScitqError):
    """Some tasks of the workflow failed or were canceled; `counts` is {step: counts}."""

    def __init__(self, message, counts=None, failed=None):
        super().__init__(message, detail={"failed_tasks": failed or {}})
        self.counts = counts or {}
        self.failed = failed or {}     # {step: [first few failed task ids]}


class Task:
    """The handle of one iteration of a step (one task). `id` is set once submitted."""

    def __init__(self, step, index, name, spec, output):
        self.step = step
        self.index = index
        self.name = name
        self.output = output
        self.spec = spec            # the task's fields but inputs and depends_on
        self.inputs = []            # URIs and handles, resolved at submission
        self.deps = []              # handles, in order, without duplicates
        self.id = None

    @property
    def workflow(self):
        return self.step.workflow

    def gather(self):
        """Every iteration of this handle's step declared so far."""
        return Gather(self.step, list(self.step.tasks))

    def __repr__(self):
        return f"<{self.step.name}[{self.index}] {self.name!r} id={self.id}>"


class Gather:
    """A snapshot of a step's iterations, usable as inputs or depends_on."""

    def __init__(self, step, tasks):
        self.step = step
        self.tasks = tasks

    def __iter__(self):
        return iter(self.tasks)

    def __len__(self):
        return len(self.tasks)

    def __repr__(self):
        return f"<gather {self.step.name} x{len(self.tasks)}>"


class Step:
    """One batch: its iterations and its concurrency cap."""

    def __init__(self, workflow, name):
        self.workflow = workflow
        self.name = name
        self.batch = f"{workflow.name}.{name}"
        self.tasks = []
        self.concurrency = None
        self.needs = set()          # names of the steps this one depends on
        self.submitted = False


def _listify(value):
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


class Workflow:
    def __init__(self, name, server=None, output=None, container=None, container_options=None,
                 resources=None, retries=0, retry_delay=None, timeout=None):
        """`server`: a URL (default: $SCITQ_SERVER or the local one) or a Client.
        `output`: base URI of the steps' output folders. The rest are defaults for every step."""
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"invalid workflow name {name!r}: letters, digits and ._+@:=- "
                             "(no '/' nor spaces), starting with a letter or digit")
        self.name = name
        self.client = server if isinstance(server, Client) else Client(server)
        self.output = output.rstrip("/") if output else None
        self.defaults = {"container": container, "container_options": container_options,
                         "resources": resources, "retries": retries,
                         "retry_delay": retry_delay, "timeout": timeout}
        self.steps = {}             # name -> Step, in declaration order

    def __repr__(self):
        return f"<Workflow {self.name} steps={list(self.steps)}>"

    @property
    def batches(self):
        return [s.batch for s in self.steps.values()]

    # -- declaring -----------------------------------------------------------------
    def step(self, name, command, *, inputs=None, depends_on=None, container=None,
             container_options=None, resources=None, output=None, concurrency=None, retries=None,
             retry_delay=None, timeout=None, use_cache=False, task_name=None, shell=True):
        """Add one iteration (one task) to step `name`; returns its handle."""
        step = self._check_step_call(name, command, concurrency)

        # Resolve everything before touching the workflow, so a bad call leaves no trace.
        index = len(step.tasks) if step else 0
        in_uris, in_tasks = self._inputs(name, inputs)
        deps = self._deps(name, depends_on)
        for t in in_tasks:          # reading a task's output means waiting for it
            if t not in deps:
                deps.append(t)
        self._check_no_cycle(name, {t.step.name for t in deps})

        spec = self._task_spec(name, index, command, task_name, shell, use_cache, output,
                               container=container, container_options=container_options,
                               resources=resources, retries=retries, retry_delay=retry_delay,
                               timeout=timeout)
        output = spec["output"]

        if step is None:
            step = self.steps[name] = Step(self, name)
        if concurrency is not None:
            step.concurrency = concurrency
        task = Task(step, index, spec["name"], spec, output)
        task.inputs = in_uris
        task.deps = deps
        step.needs |= {t.step.name for t in deps}
        step.tasks.append(task)
        return task

    def _check_step_call(self, name, command, concurrency):
        """Refuse a bad step() call before anything changes; the step declared so far, or None."""
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"invalid step name {name!r}: letters, digits and ._+@:=- "
                             "(no '/' nor spaces), starting with a letter or digit")
        if len(f"{self.name}.{name}") > 128:
            raise ValueError(f"workflow and step names {self.name}.{name} exceed 128 characters")
        if not isinstance(command, str) or not command.strip():
            raise ValueError(f"step {name}: the command must be a non-empty string")
        if concurrency is not None and (isinstance(concurrency, bool) or
                                        not isinstance(concurrency, int) or concurrency < 1):
            raise ValueError(f"step {name}: concurrency must be a positive integer, "
                             f"got {concurrency!r}")
        step = self.steps.get(name)
        if step is not None and step.submitted:   # its new iterations would never be sent
            raise ValueError(f"step {name} was submitted already: declare its iterations "
                             "before run()")
        if (step is not None and concurrency is not None and step.concurrency is not None
                and concurrency != step.concurrency):
            raise ValueError(f"step {name}: concurrency {concurrency} contradicts the "
                             f"{step.concurrency} given before (it is one cap for the whole step)")
        return step

    def _task_spec(self, name, index, command, task_name, shell, use_cache, output, **given):
        """The task's submission fields: what step() was given, else the workflow's defaults."""
        picked = {key: self.defaults[key] if value is None else value for key, value in given.items()}
        if output is None and self.output:
            output = f"{self.output}/{name}/{index}/"
        spec = {
            "command": command,
            "name": task_name if task_name is not None else f"{name}-{index}",
            "shell": shell,
            "container": picked["container"],
            "container_options": picked["container_options"],
            "resources": _listify(picked["resources"]) or None,
            "output": output,
            "retries": picked["retries"],
            "retry_delay": picked["retry_delay"],
            "timeout": picked["timeout"],
            "use_cache": True if use_cache else None,
        }
        for uri in spec["resources"] or []:
            if not isinstance(uri, str):
                raise ValueError(f"step {name}: resources are URI strings, got {type(uri).__name__}")
        return spec

    def _own(self, where, step_name, value):
        if isinstance(value, Gather):
            tasks = value.tasks
        elif isinstance(value, Task):
            tasks = [value]
        else:
            raise ValueError(f"step {step_name}: {where} takes step handles, gathers or lists "
                             f"of them, got {type(value).__name__} {value!r:.60}")
        for t in tasks:
            if t.workflow is not self:
                raise ValueError(f"step {step_name}: {where} refers to {t!r} of workflow "
                                 f"{t.workflow.name!r}, not of {self.name!r}")
        return tasks

    def _inputs(self, step_name, inputs):
        """(list of URIs and handles in order, handles among them)."""
        items, tasks = [], []
        for value in _listify(inputs):
            if isinstance(value, str):
                if not value.strip():
                    raise ValueError(f"step {step_name}: an input URI is empty")
                items.append(value)
                continue
            for t in self._own("inputs", step_name, value):
                if not t.output:
                    raise ValueError(f"step {step_name}: {t!r} has no output to read from "
                                     "(give the Workflow an output base or the step an output=)")
                items.append(t)
                if t not in tasks:
                    tasks.append(t)
        return items, tasks

    def _deps(self, step_name, depends_on):
        deps = []
        for value in _listify(depends_on):
            for t in self._own("depends_on", step_name, value):
                if t not in deps:
                    deps.append(t)
        return deps

    def _check_no_cycle(self, name, needed):
        """Each step is sent in one request, so the steps must form a DAG among themselves."""
        if name in needed:
            raise ValueError(f"step {name}: an iteration cannot depend on another iteration of "
                             "the same step (a step is submitted at once); make it another step")
        seen, todo = set(), list(needed)
        while todo:
            s = todo.pop()
            if s == name:
                raise ValueError(f"step {name}: depending on {sorted(needed)} makes a cycle "
                                 "between steps")
            if s not in seen:
                seen.add(s)
                todo += self.steps[s].needs

    # -- submitting ------------------------------------------------------------------
    def _order(self):
        """Steps in declaration order, except that a step comes after those it needs."""
        done, order = set(), []
        pending = list(self.steps.values())
        while pending:
            step = next(s for s in pending if s.needs <= done)   # exists: no cycles
            pending.remove(step)
            done.add(step.name)
            order.append(step)
        return order

    def submit(self):
        """Send every step not sent yet (one request per step); returns {step: [task ids]}."""
        order = [s for s in self._order() if not s.submitted]
        # A workflow owns its batches: adding to a used one would mix another run's tasks
        # into this one's progress and failures. Check them all before sending anything.
        for step in order:
            try:
                existing = self.client.batch(step.batch)
            except NotFound:
                continue
            if existing["counts"]["total"]:
                raise Conflict(f"batch {step.batch} already holds {existing['counts']['total']} "
                               f"task(s): clean() the previous run or name the workflow otherwise")
        for step in order:
            self._ensure_batch(step)
            specs = []
            for t in step.tasks:
                spec = {k: v for k, v in t.spec.items() if v is not None}
                if t.inputs:
                    spec["inputs"] = [_folder(i.output) if isinstance(i, Task) else i
                                      for i in t.inputs]
                if t.deps:
                    spec["depends_on"] = [d.id for d in t.deps]
                specs.append(spec)
            ids = self.client.add_tasks(specs, batch=step.batch)
            for t, tid in zip(step.tasks, ids):
                t.id = tid
            step.submitted = True
        return {s.name: [t.id for t in s.tasks] for s in self.steps.values()}

    def _ensure_batch(self, step):
        if step.concurrency is None:
            return          # add_tasks makes the batch
        try:
            self.client.create_batch(step.batch, concurrency=step.concurrency)
        except Conflict:    # made empty beforehand (checked above): set its cap
            self.client.set_batch(step.batch, concurrency=step.concurrency)

    # -- waiting -----------------------------------------------------------------------
    def counts(self):
        """{step: the server's counts of its batch}."""
        return {s.name: self.client.batch(s.batch)["counts"] for s in self.steps.values()}

    def run(self, refresh=1.0, progress=True, timeout=None):
        """Submit (once), then wait until nothing remains in any step; returns {step: counts}.
        Raises WorkflowFailed if tasks failed or were canceled, TimeoutError after `timeout` s."""
        if not self.steps:
            raise ValueError(f"workflow {self.name} has no step")
        self.submit()
        deadline = None if timeout is None else time.monotonic() + timeout
        if progress:
            with Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                          MofNCompleteColumn(), TextColumn("{task.fields[detail]}"),
                          TimeElapsedColumn(), console=Console(), transient=False) as bars:
                rows = {name: bars.add_task(name, total=None, detail="") for name in self.steps}

                def show(counts):
                    for name, c in counts.items():
                        bars.update(rows[name], total=c["total"],
                                    completed=c["total"] - c["remaining"],
                                    detail=f"running {c['running']}  waiting {c['waiting']}  "
                                           f"failed {c['failed'] + c['canceled']}")
                counts = self._wait(refresh, deadline, show)
        else:
            counts = self._wait(refresh, deadline, None)
        self._raise_failures(counts)
        return counts

    def _wait(self, refresh, deadline, show):
        while True:
            counts = self.counts()
            if show:
                show(counts)
            left = [name for name, c in counts.items() if c["remaining"]]
            if not left:
                return counts
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"workflow {self.name} still has "
                                   f"{sum(counts[n]['remaining'] for n in left)} task(s) to do")
            # The server answers this wait at the end of the step's last task, or after
            # `refresh` s (the bars move): the workflow's end is seen at once, not up to
            # `refresh` s late.
            wait = refresh if show else 20.0
            if deadline is not None:
                wait = max(0.0, min(wait, deadline - time.monotonic()))
            self.client.wait_for_batch(self.steps[left[-1]].batch, wait)

    def _raise_failures(self, counts):
        bad = {name: c for name, c in counts.items() if c["failed"] or c["canceled"]}
        if not bad:
            return
        failed = {}
        for name in bad:
            page = self.client.tasks(batch=self.steps[name].batch, status="failed",
                                     limit=_SHOWN_FAILURES)
            failed[name] = [t["id"] for t in page["items"]]
        parts = []
        for name, c in bad.items():
            ids = ", ".join(map(str, failed[name]))
            parts.append(f"{name}: {c['failed']} failed{f' (tasks {ids})' if ids else ''}, "
                         f"{c['canceled']} canceled")
        raise WorkflowFailed(f"workflow {self.name}: " + "; ".join(parts), counts, failed)

    # -- cleaning -------------------------------------------------------------------
    def clean(self):
        """Delete the workflow's batches with their tasks and logs (ones already gone are
        fine). Refused by the server while tasks run. Output folders are kept."""
        for step in self.steps.values():
            try:
                self.client.delete_batch(step.batch)
            except NotFound:
                pass
            step.submitted = False      # a later run() submits again
            for t in step.tasks:
                t.id = None


def _folder(uri):
    return uri if uri.endswith("/") else uri + "/"
