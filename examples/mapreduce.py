"""Count words over many files with a three-step scitq workflow (map, combine, reduce).

    python examples/mapreduce.py --server http://127.0.0.1:5000 --workdir /tmp/mr [--files 50]

Think of each input file as one sample (a FASTQ file, a BAM file): most pipelines first
process every sample on its own, then merge the per-sample results into one table. Here:

1. map, one task per sample: count the words of the file (as you would count reads per gene
   with featureCounts, or k-mers with jellyfish), writing "word<TAB>count" lines.
2. combine, one task per sample, after its own map task only: normalise that sample's
   table (lower-case the words, drop those shorter than 3 letters, re-sum and sort), as you
   would filter low-quality features before merging.
3. reduce, one task, after every combine task: sum all the tables into out/total.txt (the
   merged count table).

Each task gets its files in $INPUT and writes its results in $OUTPUT; scitq copies inputs
in before the command runs and outputs out after it, here between folders of WORKDIR
(file:// URIs; s3:// and the like work the same way on a real cluster). A combine task
starts as soon as its own map task has succeeded, without waiting for the other samples,
and if a map task fails for good its combine task is canceled rather than run on nothing.

The script then computes the same counts in plain Python and compares: exit 0 if they
match, 1 otherwise (or if a task failed). The workflow's batches ("mapreduce.map", ...)
stay on the server so that you can look at them (`scitq batch list`); --clean deletes them.
"""
import argparse
import random
import sys
from collections import Counter
from pathlib import Path

from scitq.errors import ScitqError
from scitq.workflow import Workflow, WorkflowFailed

# Mixed case and short words, so that the combine step has something to normalise.
VOCABULARY = ["gene", "Gene", "GENE", "read", "reads", "Read", "exon", "intron", "of", "a",
              "the", "The", "allele", "variant", "Variant", "genome", "sample", "to", "in",
              "protein", "RNA", "DNA", "dna", "locus", "codon", "is", "primer", "Primer"]


# The commands, in shell and awk; each writes "word<TAB>count" lines sorted bytewise. The
# file names carry the iteration number so that gathered outputs never collide.
def map_command(file, n):
    return ("awk '{for (i = 1; i <= NF; i++) n[$i]++} END {for (w in n) print w \"\\t\" n[w]}' "
            f'"$INPUT/{file}" | LC_ALL=C sort > "$OUTPUT/map-{n}.tsv"')


def combine_command(n):
    return ("awk -F'\\t' 'length($1) >= 3 {c[tolower($1)] += $2} END {for (w in c) print w \"\\t\" c[w]}' "
            f'"$INPUT/map-{n}.tsv" | LC_ALL=C sort > "$OUTPUT/combined-{n}.tsv"')


# `find` rather than a glob: 50 folders are gathered into $INPUT, however they are laid out.
REDUCE = ("find \"$INPUT\" -type f -name 'combined-*.tsv' -exec cat {} + | "
          "awk -F'\\t' '{c[$1] += $2} END {for (w in c) print w \"\\t\" c[w]}' | "
          'LC_ALL=C sort > "$OUTPUT/total.txt"')


def make_inputs(folder, count):
    """`count` small text files with the same content at every run (seeded)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(count):
        rng = random.Random(i)
        lines = [" ".join(rng.choice(VOCABULARY) for _ in range(rng.randint(3, 12)))
                 for _ in range(rng.randint(20, 60))]
        path = folder / f"sample-{i:03d}.txt"
        path.write_text("\n".join(lines) + "\n")
        files.append(path)
    return files


def expected_counts(files):
    """What the three steps compute, in plain Python."""
    total = Counter()
    for path in files:
        for word in path.read_text().split():
            if len(word) >= 3:
                total[word.lower()] += 1
    return "".join(f"{w}\t{n}\n" for w, n in sorted(total.items()))


def build(name, server, files, out):
    wf = Workflow(name, server=server, output=f"file://{out}", retries=1, timeout=300)
    for n, path in enumerate(files):
        m = wf.step("map", map_command(path.name, n), inputs=[f"file://{path}"],
                    concurrency=4)          # at most 4 map tasks at once, over all workers
        c = wf.step("combine", combine_command(n), inputs=m)   # reading m waits for m
    # The reduce task reads every combine output: it waits for all of them. Its result goes
    # to the top of out/ rather than out/reduce/0/.
    wf.step("reduce", REDUCE, inputs=c.gather(), output=f"file://{out}/")
    return wf


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server", help="scitq server URL (default: $SCITQ_SERVER or local)")
    ap.add_argument("--workdir", required=True, type=Path, help="where in/ and out/ are made")
    ap.add_argument("--files", type=int, default=50, help="number of input files (at least 1)")
    ap.add_argument("--name", default="mapreduce", help="workflow name (its batches' prefix)")
    ap.add_argument("--no-progress", action="store_true", help="print no progress bars")
    ap.add_argument("--clean", action="store_true", help="delete the batches at the end")
    args = ap.parse_args(argv)
    if args.files < 1:
        ap.error("--files must be at least 1")

    workdir = args.workdir.resolve()
    files = make_inputs(workdir / "in", args.files)
    out = workdir / "out"
    wf = build(args.name, args.server, files, out)
    try:
        counts = wf.run(progress=not args.no_progress)
    except WorkflowFailed as err:
        print(f"failed: {err}", file=sys.stderr)
        if args.clean:
            wf.clean()
        return 1
    except ScitqError as err:       # no server there, or a previous run's batches (--name)
        print(f"error: {err.message}", file=sys.stderr)
        return 1
    if args.clean:
        wf.clean()

    total = out / "total.txt"
    got = total.read_text() if total.exists() else None
    if got != expected_counts(files):
        print(f"mismatch: {total} differs from the counts computed in Python", file=sys.stderr)
        return 1
    tasks = sum(c["succeeded"] for c in counts.values())
    words = sum(int(line.split("\t")[1]) for line in got.splitlines())
    print(f"ok: {tasks} tasks over {len(files)} files; {len(got.splitlines())} distinct words, "
          f"{words} in all; result in {total}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
