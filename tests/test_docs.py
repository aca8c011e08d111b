"""Every command the documentation shows a user runs, in the order written, against an empty
local control plane with the operator running from the chart's ServiceAccount -- or is marked
not runnable here with the reason (the rules: tests/docs_runner.py).

Each document gets a cluster of its own (a user's empty cluster: the README and the chart's
README both `helm install teal` into teal-system). The chart's NOTES are followed as
`helm install` prints them after the chart README's install. The summary (commands run,
blocks marked and why) goes to stderr at the end of the module.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from docs_runner import (
    ROOT,
    Block,
    DocFailure,
    Outcome,
    count_commands,
    markdown_blocks,
    notes_blocks,
    run_blocks,
    talks_to_cluster,
    terminal,
)

CHART_README = "charts/teal/README.md"
NOTES = ROOT / "charts/teal/templates/NOTES.txt"
DOCS = ["README.md", CHART_README, *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
_OUTCOMES: list[Outcome] = []
# What the prose around the commands promises, as the commands print it (a command that
# exits 0 but does not do what the page says fails too).
CLAIMS = {
    "README.md": ["Healthy: revision 1 is live on blue", "Healthy: revision 2 is live on green", '"teal.dev/color":"green"'],
    "docs/kind-quickstart.md": [
        '"teal.dev/color":"blue"',
        "Paused (AwaitingPromotion)",
        "hello-preview   preview   → green",
        '"teal.dev/color":"green"',
        "Healthy: revision 3 is live on blue",
    ],
    "charts/teal/templates/NOTES.txt": ["Healthy: revision 1 is live on blue", "Healthy: revision 2 is live on green"],
}


@pytest.fixture(scope="module", autouse=True)
def report(request):
    yield
    if not _OUTCOMES:
        return
    lines = ["documented commands (tests/test_docs.py):"]
    lines += [f"  {o.summary()}" for o in _OUTCOMES]
    ran = sum(o.commands for o in _OUTCOMES)
    marked = [b for o in _OUTCOMES for b in o.marked]
    lines.append(
        f"  total: {ran} command(s) run in {sum(len(o.ran) for o in _OUTCOMES)} block(s) of "
        f"{len(_OUTCOMES)} document(s); {len(marked)} block(s) ({sum(b.commands for b in marked)} "
        f"command(s)) not runnable here:"
    )
    lines += [f"    {b.where()}: {b.reason}" for b in marked]
    slowest = sorted((b for o in _OUTCOMES for b in o.ran), key=lambda b: -b.seconds)[:5]
    lines.append("  slowest blocks: " + ", ".join(f"{b.where()} {b.seconds:.1f} s" for b in slowest))
    with request.config.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
        sys.stderr.write("\n" + "\n".join(lines) + "\n")


@pytest.fixture(scope="session")
def kubectl_teal() -> str:
    path = Path(sys.executable).parent / "kubectl-teal"
    found = str(path) if path.exists() else shutil.which("kubectl-teal")
    if not found:
        pytest.fail("kubectl-teal is not installed in the test environment (pip install -e .)")
    return found


# ---------------------------------------------------------------- the documents, run


@pytest.mark.cluster
@pytest.mark.timeout(400)
@pytest.mark.parametrize("doc", DOCS)
def test_documented_commands_run(doc, helm, kubectl, kubectl_teal, tmp_path):
    blocks = markdown_blocks(ROOT / doc)
    outcome = Outcome(doc)
    _OUTCOMES.append(outcome)
    notes = None
    with terminal(tmp_path, [kubectl, helm, kubectl_teal], talks_to_cluster(blocks)) as (shell, operators):
        for block in blocks:
            run_blocks(outcome, [block], shell, operators)
            if doc == CHART_README and notes is None and "NOTES:" in block.output:
                # a user who installed the chart follows the NOTES it printed, then reads on
                notes = Outcome(str(NOTES.relative_to(ROOT)))
                _OUTCOMES.append(notes)
                run_blocks(notes, notes_blocks(block.output, NOTES), shell, operators)
    if doc == CHART_README:
        assert notes, f"no block of {doc} printed the chart's NOTES"
        assert notes.commands >= 5, f"only {notes.commands} command(s) found in the printed NOTES"
    for block in outcome.marked:
        assert len(block.reason) >= 15, f"{block.where()}: say why it cannot run here, not just {block.reason!r}"
    for done in [outcome, *([notes] if notes else [])]:
        printed = "\n".join(b.output for b in done.ran)
        missing = [claim for claim in CLAIMS.get(done.doc, []) if claim not in printed]
        assert not missing, f"{done.doc} says so, but its commands did not print {missing}:\n{printed[-3000:]}"


# ---------------------------------------------------------------- the rules themselves


def test_every_document_parses_and_names_only_real_markers():
    for doc in DOCS:
        for block in markdown_blocks(ROOT / doc):
            assert block.script.strip(), f"{block.where()}: an empty command block"


def test_rules_find_commands_transcripts_and_markers(tmp_path):
    md = tmp_path / "doc.md"
    md.write_text(
        "\n".join(
            [
                "```sh",
                "echo one \\",
                "  two",
                "cat <<'EOF'",
                "not a command",
                "EOF",
                "```",
                "```yaml",
                "kind: Service",
                "```",
                "```",
                "$ kubectl get pods",
                "NAME READY",
                "```",
                "<!-- not-runnable: needs a Docker daemon -->",
                "```bash",
                "docker build .",
                "```",
                "```",
                "a tree, no prompt",
                "```",
            ]
        )
    )
    blocks = markdown_blocks(md, root=tmp_path)
    assert [(b.line, b.commands, b.reason) for b in blocks] == [(1, 2, None), (11, 1, None), (16, 1, "needs a Docker daemon")]
    assert blocks[1].script == "kubectl get pods"
    md.write_text("<!-- not-runnable: stale -->\n\nprose\n")
    with pytest.raises(DocFailure, match="annotate no command block"):
        markdown_blocks(md, root=tmp_path)


def test_notes_markers_match_the_printed_line(tmp_path):
    template = tmp_path / "NOTES.txt"
    template.write_text(
        "1. Up:\n\n     kubectl -n {{ .Release.Namespace }} logs deploy/x"
        "{{/* not-runnable: no container runs here */}}\n     kubectl teal list\n"
    )
    printed = "NAME: t\nNOTES:\n1. Up:\n\n     kubectl -n teal-system logs deploy/x\n     kubectl teal list\n"
    assert [(b.script, b.reason) for b in notes_blocks(printed, template, root=tmp_path)] == [
        ("kubectl -n teal-system logs deploy/x", "no container runs here"),
        ("kubectl teal list", None),
    ]


def test_a_failing_command_fails_its_document(tmp_path):
    blocks = [
        Block("doc.md", 1, "cd /\nexport GREETING=hi"),
        Block("doc.md", 5, 'test "$PWD$GREETING" = /hi'),
        Block("doc.md", 9, "true\nfalse\necho never"),
    ]
    outcome = Outcome("doc.md")
    with terminal(tmp_path, [shutil.which("bash")], with_cluster=False) as (shell, _):
        with pytest.raises(DocFailure, match=r"doc.md:9: exit 1"):
            run_blocks(outcome, blocks, shell, None)
    assert [b.line for b in outcome.ran] == [1, 5]  # directory and variables carried over, like one terminal
    assert count_commands("a && b\n# c\n\nd \\\n  e") == 2
