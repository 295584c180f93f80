"""terraform/: the server's own host on OVHcloud and Azure, checked by parsing (no terraform here).

Every .tf file is read with python-hcl2; the checks are those `terraform validate` would make
that matter most here (declared variables, existing resources, sensitive outputs), plus what
the modules promise: the README's variables, the four outputs, pinned providers, and a
cloud-init template that renders a `scitq server` command line the real CLI accepts.
"""
import configparser
import functools
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

import hcl2  # noqa: E402  (python-hcl2, in the dev extra)

ROOT = Path(__file__).resolve().parent.parent / "terraform"
MODULES = ["ovh", "azure"]
TEMPLATE = "cloud-init.yaml.tftpl"
OUTPUTS = ["server_url", "server_ip", "ssh_command", "database_url"]

VAR_REF = re.compile(r"(?<![\w.])var\.(\w+)")
LOCAL_REF = re.compile(r"(?<![\w.])local\.(\w+)")
RESOURCE_REF = re.compile(r"(?<![\w.])((?:openstack|azurerm|random)_\w+)\.(\w+)")
DATA_REF = re.compile(r"(?<![\w.])data\.(\w+)\.(\w+)")
# What templatefile() would fill in: ${name}, but not the escaped $${...}.
TEMPLATE_INTERPOLATION = re.compile(r"(?<!\$)\$\{([^}]*)\}")


def _plain(value):
    """hcl2's output without its markers: no __is_block__/__comments__, no quotes around strings."""
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items() if not k.startswith("__")}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def _strings(value):
    """Every string value (not key) in a parsed tree: where the expressions are."""
    if isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


class Module:
    """One terraform/<name>/ folder, its .tf files merged the way terraform merges them."""

    def __init__(self, name):
        self.name, self.path = name, ROOT / name
        self.files = {p.name: _plain(hcl2.load(p.open())) for p in sorted(self.path.glob("*.tf"))}
        self.variables, self.outputs, self.locals = {}, {}, {}
        self.resources, self.data = {}, {}
        self.required_providers, self.terraform = {}, {}
        for tree in self.files.values():
            for block in tree.get("variable", []):
                self.variables.update(block)
            for block in tree.get("output", []):
                self.outputs.update(block)
            for block in tree.get("locals", []):
                self.locals.update(block)
            for kind, into in (("resource", self.resources), ("data", self.data)):
                for block in tree.get(kind, []):
                    for rtype, named in block.items():
                        for rname, body in named.items():
                            into[(rtype, rname)] = body
            for block in tree.get("terraform", []):
                self.terraform.update(block)
                for providers in block.get("required_providers", []):
                    self.required_providers.update(providers)

    def strings(self):
        return [s for tree in self.files.values() for s in _strings(tree)]

    def refs(self, pattern):
        return {m.groups() if pattern.groups > 1 else m.group(1)
                for s in self.strings() for m in pattern.finditer(s)}

    def secret_locals(self):
        """Locals whose value carries a generated password, directly or through another local."""
        secret = set()
        while True:
            more = {name for name, value in self.locals.items() if name not in secret and any(
                "random_password." in s or set(LOCAL_REF.findall(s)) & secret for s in _strings(value))}
            if not more:
                return secret
            secret |= more


@functools.cache
def module(name):
    return Module(name)


@functools.cache
def readme_sections():
    """README section text by module name, from headings naming `terraform/<module>`."""
    text = (ROOT / "README.md").read_text()
    sections = {}
    for part in re.split(r"^## ", text, flags=re.M)[1:]:
        heading = part.splitlines()[0]
        for name in MODULES:
            if f"terraform/{name}" in heading:
                sections[name] = part
    return sections


def template_names(text):
    names = TEMPLATE_INTERPOLATION.findall(text)
    odd = [n for n in names if not re.fullmatch(r"[A-Za-z_]\w*", n.strip())]
    assert not odd, f"{TEMPLATE} may hold plain ${{name}} only (the test renders it): {odd}"
    return {n.strip() for n in names}


def render(text, values):
    """templatefile() for a template of plain ${name}s: bools as true/false, $${ as ${."""
    assert "%{" not in text.replace("%%{", ""), f"{TEMPLATE} uses no template directive"

    def fill(match):
        if match.group(0) == "$${":
            return "${"
        value = values[match.group(1).strip()]
        return str(value).lower() if isinstance(value, bool) else str(value)

    return re.sub(r"\$\$\{|(?<!\$)\$\{([^}]*)\}", fill, text)


def test_every_module_is_there_and_parses():
    assert sorted(p.name for p in ROOT.iterdir() if p.is_dir()) == sorted(MODULES)
    for name in MODULES:
        assert {"main.tf", "variables.tf", "outputs.tf", "versions.tf"} <= set(module(name).files)
        assert (ROOT / name / TEMPLATE).is_file()


@pytest.mark.parametrize("name", MODULES)
def test_readme_variables_are_declared_and_cover_the_required_ones(name):
    mod = module(name)
    section = readme_sections().get(name)
    assert section, f"terraform/README.md has no section for terraform/{name}"
    blocks = re.findall(r"```hcl\n(.*?)```", section, flags=re.S)
    assert blocks, f"the README's {name} section shows no terraform.tfvars (```hcl block)"
    named = set()
    for block in blocks:
        named |= set(_plain(hcl2.loads(block)))
    assert named - set(mod.variables) == set(), "README names variables the module lacks"
    required = {v for v, body in mod.variables.items() if "default" not in body}
    assert required, "a module with nothing to set would start with someone else's SSH key"
    assert required <= named, "README omits variables that must be set"
    assert "terraform init" in section and "terraform apply" in section


@pytest.mark.parametrize("name", MODULES)
def test_every_variable_has_a_description_and_a_type(name):
    variables = module(name).variables
    assert variables
    for var, body in variables.items():
        assert str(body.get("description", "")).strip(), f"variable {var} has no description"
        assert body.get("type"), f"variable {var} has no type"


@pytest.mark.parametrize("name", MODULES)
def test_outputs_and_their_sensitivity(name):
    mod = module(name)
    assert set(OUTPUTS) <= set(mod.outputs)
    assert mod.outputs["database_url"].get("sensitive") is True
    assert "local.database_url" in mod.outputs["database_url"]["value"]
    for out in ("server_url", "server_ip", "ssh_command"):
        assert mod.outputs[out].get("sensitive") is not True, f"{out} is for everyone to read"
    # terraform refuses an output that shows a sensitive value without sensitive = true.
    secret = mod.secret_locals()
    assert "database_url" in secret
    for out, body in mod.outputs.items():
        value = " ".join(_strings(body.get("value")))
        if "random_password." in value or set(LOCAL_REF.findall(value)) & secret:
            assert body.get("sensitive") is True, f"output {out} shows the database password"
    url = mod.outputs["server_url"]["value"]
    assert url.startswith("http://") and url.endswith(":${var.scitq_port}")


@pytest.mark.parametrize("name", MODULES)
def test_required_providers_are_pinned(name):
    mod = module(name)
    assert mod.terraform.get("required_version", "").startswith(">=")
    used = {rtype.split("_")[0] for rtype, _ in list(mod.resources) + list(mod.data)}
    assert used <= set(mod.required_providers), "every provider used is required"
    for provider, spec in mod.required_providers.items():
        assert "/" in spec.get("source", ""), f"{provider} has no source"
        assert re.match(r"^\s*(~>|>=|=)\s*\d+\.\d+", spec.get("version", "")), \
            f"{provider} has no version constraint"


@pytest.mark.parametrize("name", MODULES)
def test_every_reference_is_declared(name):
    mod = module(name)
    used_vars = mod.refs(VAR_REF)
    assert used_vars, "the parser found no var.X at all: the check would prove nothing"
    assert used_vars - set(mod.variables) == set(), "undeclared variables"
    assert mod.refs(LOCAL_REF) - set(mod.locals) == set(), "undeclared locals"
    used_resources = mod.refs(RESOURCE_REF)
    assert ("random_password", "db") in used_resources
    assert used_resources - set(mod.resources) == set(), "references to missing resources"
    assert mod.refs(DATA_REF) - set(mod.data) == set(), "references to missing data sources"
    unused = set(mod.variables) - used_vars
    assert not unused, f"variables declared but never used: {unused}"


@pytest.mark.parametrize("name", MODULES)
def test_firewall_opens_ssh_and_the_scitq_port_to_their_cidrs(name):
    openings = set()
    for (rtype, _), body in module(name).resources.items():
        if rtype in ("openstack_networking_secgroup_rule_v2", "azurerm_network_security_rule"):
            port = str(body.get("port_range_min", body.get("destination_port_range")))
            sources = str(body.get("for_each", body.get("source_address_prefixes")))
            openings.add((port, sources))
    assert any(port == "22" and "var.ssh_cidrs" in src for port, src in openings), openings
    assert any("var.scitq_port" in port and "var.scitq_cidrs" in src for port, src in openings), openings


def test_both_modules_boot_the_same_cloud_init():
    texts = {name: (ROOT / name / TEMPLATE).read_text() for name in MODULES}
    assert len(set(texts.values())) == 1, f"terraform/*/{TEMPLATE} have drifted apart"


@pytest.mark.parametrize("name", MODULES)
def test_template_gets_exactly_the_variables_it_uses(name):
    mod = module(name)
    supplied = mod.locals.get("cloud_init_vars")
    assert isinstance(supplied, dict), "locals.cloud_init_vars holds the template's variables"
    assert set(supplied) == template_names((mod.path / TEMPLATE).read_text())
    assert supplied["database_url"] == "${local.database_url}"
    assert mod.locals["database_url"].startswith("postgresql://")
    call = f'templatefile("${{path.module}}/{TEMPLATE}", local.cloud_init_vars)'
    assert any(call in s for s in mod.strings()), f"no resource boots with {call}"


def _rendered(name, local_postgresql):
    """The template as the module would render it, with sample values for computed ones."""
    mod = module(name)
    samples = {
        "database_url": "postgresql://scitq:Secret42@127.0.0.1:5432/scitq",
        "maintenance_url": "postgresql://scitq:Secret42@127.0.0.1:5432/postgres",
        "db_password": "Secret42",
        "local_postgresql": local_postgresql,
        "data_disk_paths": "/dev/disk/by-id/*0123456789abcdef0123*",
    }
    values = {}
    for key, expr in mod.locals["cloud_init_vars"].items():
        plain_var = re.fullmatch(r"\$\{var\.(\w+)\}", str(expr))
        values[key] = mod.variables[plain_var.group(1)]["default"] if plain_var else samples[key]
    text = render((mod.path / TEMPLATE).read_text(), values)
    return values, text


def _file(config, path):
    files = [f for f in config["write_files"] if f["path"] == path]
    assert len(files) == 1, f"cloud-init writes {path} once"
    return files[0]["content"]


@pytest.mark.parametrize("local_postgresql", [True, False])
@pytest.mark.parametrize("name", MODULES)
def test_cloud_init_runs_scitq_server_on_postgresql(name, local_postgresql, monkeypatch):
    from scitq.cli.servers import server

    values, text = _rendered(name, local_postgresql)
    assert text.startswith("#cloud-config\n")
    config = yaml.safe_load(text)

    unit = configparser.ConfigParser(interpolation=None, strict=True)
    unit.optionxform = str
    unit.read_string(_file(config, "/etc/systemd/system/scitq.service"))
    argv = shlex.split(unit["Service"]["ExecStart"])
    assert argv[0].endswith("/bin/scitq") and argv[1] == "server"
    assert "--db" not in argv and values["db_password"] not in unit["Service"]["ExecStart"]
    # The database URL, password included, comes from a root-only environment file.
    assert unit["Service"]["EnvironmentFile"] == "/etc/scitq/server.env"
    env_file = [f for f in config["write_files"] if f["path"] == "/etc/scitq/server.env"][0]
    assert env_file["permissions"] == "0600" and env_file["owner"] == "root:root"
    env = dict(line.split("=", 1) for line in env_file["content"].splitlines() if line)
    assert env == {"SCITQ_DB": values["database_url"]}
    monkeypatch.setenv("SCITQ_DB", env["SCITQ_DB"])
    ctx = server.make_context("scitq server", argv[2:])       # the real CLI must accept it
    assert ctx.params["db"] == values["database_url"]
    assert ctx.params["db"].startswith("postgresql://")
    assert ctx.params["host"] == "0.0.0.0"
    assert ctx.params["port"] == int(values["scitq_port"]) == 5000
    assert ctx.params["data_dir"] == "/var/lib/scitq"
    assert ctx.params["auth"] is True          # it listens on every address: tokens needed
    assert unit["Install"]["WantedBy"] == "multi-user.target"

    script = _file(config, "/usr/local/sbin/scitq-setup")
    assert config["runcmd"] == [["/usr/local/sbin/scitq-setup"]]
    venv = str(Path(argv[0]).parent.parent)
    assert f"python3 -m venv {venv}" in script
    assert f'pip install -q "{values["scitq_package"]}"' in script
    assert f'local_postgresql="{str(local_postgresql).lower()}"' in script
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)   # syntax only
