"""The README and docs/*.md tell the truth about a fresh clone: every file they link or name
exists in the repository, every `minivit SUBCOMMAND` they show exists, and the tables of
docs/recipe.md match the code."""
from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import pytest

import minivit
from minivit import cli
from minivit.config_cli import format_value, option_name
from minivit.train import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PAGE_IDS = [str(p.relative_to(ROOT)) for p in PAGES]

CODE_BLOCK = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
CODE_SPAN = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# a path in the repository: dir/name, dir/, or a bare file name with a source extension
PATH = re.compile(r"^(?:\.?[\w-]+/)+[\w.-]*$|^[\w-]+\.(?:py|md|toml|txt|cfg|ya?ml)$")
NOT_IN_REPO = ("runs/", "RUN/", "http://", "https://", "/", "~")   # outputs, URLs, the user's own files
COMMAND = re.compile(r"(?:^|[\s;&|(`])(?<!import )(?<!from )(?:python3? -m )?minivit[ \t]+"
                     r"([a-z][\w-]*)")


def text_of(page: Path) -> str:
    return page.read_text(encoding="utf-8")


def code_of(text: str) -> list[str]:
    """The code blocks and the code spans outside them."""
    blocks = CODE_BLOCK.findall(text)
    prose = CODE_BLOCK.sub("", text)
    return blocks + CODE_SPAN.findall(prose)


def cited_paths(page: Path) -> list[tuple[str, Path]]:
    text = text_of(page)
    prose = CODE_BLOCK.sub("", text)
    out = []
    for target in LINK.findall(prose):
        target = target.split("#")[0]
        if target and not target.startswith(("http://", "https://", "mailto:")):
            out.append((target, (page.parent / target).resolve()))
    for span in CODE_SPAN.findall(prose):
        token = span.strip()
        if PATH.match(token) and not token.startswith(NOT_IN_REPO):
            out.append((token, (ROOT / token).resolve()))
    return out


def in_repository(name: str) -> bool:
    """A bare file name (``ddp.py`` beside the folder the text names) exists somewhere in the
    repository's own folders."""
    return any(p.is_file() for top in ("minivit", "tests", "tools", "examples", "docs")
               for p in (ROOT / top).rglob(name))


def subcommands() -> set[str]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices)


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_every_cited_path_exists_in_the_repository(page):
    missing = [name for name, path in cited_paths(page) if not path.exists()
               and not ("/" not in name and in_repository(name))]
    assert not missing, f"{page.name} cites paths a fresh clone does not have: {missing}"
    text = text_of(page)
    for outside in ("../shared", "/work/shared", "BENCHMARKS.md", "ARCHITECTURES.md",
                    "DESIGN.md", "pip install 'minivit[", 'pip install "minivit['):
        assert outside not in text, f"{page.name} cites {outside!r}, which no clone has"


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_every_minivit_command_shown_exists(page):
    known = subcommands()
    shown = {m for code in code_of(text_of(page)) for m in COMMAND.findall(code)}
    assert shown <= known, f"{page.name} shows unknown commands {sorted(shown - known)}"


def test_the_checks_find_what_they_look_for(tmp_path):
    page = tmp_path / "x.md"
    page.write_text("See [the recipe](recipe.md), `minivit/cli.py`, `tests/`, `nowhere/x.py`, "
                    "`runs/vit` and `--lr 5`.\n\n```bash\nminivit train --lr 1\nminivit "
                    "frobnicate\n```\n\n```python\nimport minivit as torch\n```\n")
    names = [name for name, _ in cited_paths(page)]
    assert names == ["recipe.md", "minivit/cli.py", "tests/", "nowhere/x.py"]
    assert {m for c in code_of(text_of(page)) for m in COMMAND.findall(c)} == \
        {"train", "frobnicate"}
    assert "README.md" in PAGE_IDS and "docs/recipe.md" in PAGE_IDS


# --- docs/recipe.md against the code ----------------------------------------------------------

def recipe_table(header: str) -> list[list[str]]:
    text = text_of(ROOT / "docs" / "recipe.md")
    start = text.index(header)
    rows = []
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip().strip("`") for c in line.strip("|").split("|")])
    return rows


def test_recipe_defaults_are_the_train_defaults():
    by_option = {option_name(f): f for f in dataclasses.fields(TrainConfig)}
    rows = recipe_table("| setting | option | default |")
    assert len(rows) >= 15
    for _, option, default in rows:
        f = by_option[option]
        assert default == format_value(getattr(TrainConfig(), f.name)), option


def test_recipe_model_table_matches_the_models():
    from minivit.autograd.flops import count_flops
    from minivit.models import create_model

    rows = recipe_table("| name | architecture | parameters | fwd GFLOP/img |")
    assert [r[0] for r in rows] == ["vit_cifar", "mlp_mixer_cifar", "maxvit_cifar",
                                    "botnet_cifar", "ceit_cifar"]
    for name, _, params, gflops in rows:
        model = create_model(name, num_classes=10).eval()
        assert sum(p.numel() for p in model.parameters()) == int(params.replace(",", "")), name
        with count_flops() as c, minivit.no_grad():
            model(minivit.randn(1, 3, 32, 32))
        assert round(c.total / 1e9, 3) == float(gflops), name


def test_recipe_normalisation_is_the_datas():
    from minivit.data import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD

    text = " ".join(text_of(ROOT / "docs" / "recipe.md").split())
    for name, mean, std in (("CIFAR-10", CIFAR10_MEAN, CIFAR10_STD),
                            ("CIFAR-100", CIFAR100_MEAN, CIFAR100_STD)):
        as_text = [", ".join(f"{255 * v:.1f}" for v in values) for values in (mean, std)]
        assert f"{name} mean ({as_text[0]})/255 and std ({as_text[1]})/255" in text, name
