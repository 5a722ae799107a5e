"""Reports lead with findings: failed records grouped by cause, declared conventions, versions.

The fixture is a realistic run: a backend whose only difference is what a query with no visible
key gets (the mean of V) fails 20 checks at 4 dtypes, each record with a reason, a shrunk
counterexample and a repro line as long as real ones; a backend that passes everything under a
declared convention; plain conforming backends. The tests read the pages back through
tests/report_parse.py and assert facts: which checks sit in which finding's rows, what each
verdict cell says, that every record is still somewhere, that hostile strings stay text.
"""

from __future__ import annotations

import copy
import json
import re

import pytest

from conformance import results
from reports import cli, findings, model
from reports import html as html_page
from reports import markdown as md_page
from tests.report_parse import code_spans, fences, numbers, parse_html, plain, section, sections, words
from tests.test_reports import HOSTILE, backend, environment, record, write

DTYPES = ("float64", "float32", "float16", "bfloat16")
FAILING = [(f"masked_check_{i:02d}", None if i % 3 else 9) for i in range(20)]  # (check, step)
PASSING = [("rows_sum_to_one", 8), ("causality", None), ("split_matches_index", 5), ("scale_is_head_dim", 7)]
BAD, DECLARED, SPEC_VALUE = "masked-mean", "declared-mean", "spec-value"
TITLE = ("queries with no visible key get the mean of V (uniform weights over every key, future and "
         "padded keys included)")
CONVENTIONS = {"fully_masked_rows": "mean_v", "float64_compute": "float32"}
VERSIONS = {"torch": "2.13.0", "numpy": "2.4.6"}


def reason(check: str, dtype: str, i: int) -> str:
    """As long as a real record's reason: the error against its tolerance, then the first wrong step."""
    return (f"end to end output: max relative error {0.31 + i / 100:.4g} > allowed {2.1e-6 * (i + 1):.3g} "
            f"(= 6 x plain-reference error {2.9e-8 * (i + 1):.3g} + floor 1.91e-06) at index (0, 2, 1, 3) "
            f"(got 0.51946, expected 0.027507); first wrong step: step 9 context (weights @ V): rows with no "
            f"visible key are the mean of V, not 0; the {dtype} run of {check} failed on 1 of 41 examples")


def counterexample(dtype: str, i: int) -> str:
    return (f"B=2, T=6, d_in=8, d_out=8, H=2, head_dim=4, causal=True, qkv_bias=True, dtype={dtype}, x_scale=1, "
            f"seed={1000 + i}, key_padding_mask=[000111, 111111]; x=[ 0.1257,-0.1321, 0.6404, 0.1049,-0.5357, "
            "0.3616, 1.304 , 0.9471,-0.7037,-1.2654,-0.6233, 0.0413,-2.3250,-0.2188,-1.2457,-0.7322,-0.5443,"
            "-0.3163, 0.4115, 1.0429,-0.1288, 1.3668]")


def repro(check: str, dtype: str) -> str:
    return f"python -m conformance.repro reports/latest/failures/{BAD}__{dtype}__{check}.npz"


def finding_doc(diagnosed: bool = True) -> dict:
    """One CPU run; `diagnosed=False`: the same file as written before the diagnosis step existed."""
    names = ["numpy", BAD, DECLARED, SPEC_VALUE]
    bks = [backend(n, steps=[]) for n in names]
    bks[1]["capabilities"] = {"dtypes": list(DTYPES), "conventions": {}}
    bks[2].update(capabilities={"dtypes": list(DTYPES), "conventions": dict(CONVENTIONS)}, versions=dict(VERSIONS))
    bks[3].update(capabilities={"conventions": {"fully_masked_rows": "zero_context"}}, versions={})
    records = []
    for b in names:
        for check, step in FAILING + PASSING:
            for i, dtype in enumerate(DTYPES):
                if b == BAD and (check, step) in FAILING:
                    n = FAILING.index((check, step))
                    records.append(record(b, check, step, dtype, "failed", reason=reason(check, dtype, n),
                                          max_error=0.31 + n / 100, tolerance=2.1e-6 * (n + 1),
                                          counterexample=counterexample(dtype, n), repro=repro(check, dtype),
                                          inputs=f"failures/{BAD}__{dtype}__{check}.npz", finding="F1"))
                else:
                    records.append(record(b, check, step, dtype))
    first = records[[r["outcome"] for r in records].index("failed")]
    f1 = {"id": "F1", "backend": BAD, "cause": "fully_masked_rows", "title": TITLE,
          "detail": ("probe: a query whose keys are all masked got the mean of V over all 6 keys (max |out - "
                     "mean(V)| 0), the spec gives zero context; if this is intended, declare "
                     "conventions={'fully_masked_rows': 'mean_v'}"),
          "convention": {"name": "fully_masked_rows", "value": "mean_v"},
          "checks": [{"check": c, "dtype": d} for c, _ in FAILING for d in DTYPES],
          "example": {k: first[k] for k in ("check", "dtype", "reason", "counterexample", "repro")}}
    conf = {"status": "complete", "started": "2026-01-01T00:00:00Z", "finished": None, "duration_s": 60.0,
            "profile": "reproducible", "seed": 1, "command": "python -m conformance", "backends": bks,
            "checks": [{"name": c, "step": s, "doc": f"{c}: what it checks, in one line."}
                       for c, s in FAILING + PASSING], "records": records, "findings": [f1]}
    doc = {"schema_version": "1.0", "kind": "mha-conformance-results",
           "runs": [{"machine": "cpu-box", "environment": environment(False), "conformance": conf, "speed": None}]}
    return doc if diagnosed else undiagnosed(doc)


def undiagnosed(doc: dict) -> dict:
    """The document without the diagnosis step's keys (an older file)."""
    doc = copy.deepcopy(doc)
    for run in doc["runs"]:
        run["conformance"].pop("findings", None)
        for r in run["conformance"]["records"]:
            r.pop("finding", None)
    return doc


def render(doc: dict) -> tuple[model.Report, str, str]:
    results.validate(doc)
    rep = model.build(doc)
    return rep, md_page.render(rep), html_page.render(rep)


@pytest.fixture(scope="module")
def pages():
    return render(finding_doc())


def col(rep: model.Report, name: str) -> int:
    return [c.backend for c in rep.matrix.columns].index(name)


def check_table(sec) -> dict[str, tuple[list[str], list[float]]]:
    """A finding's check table: check -> (dtypes, numbers of its worst error / tolerance)."""
    [t] = sec.tables()
    c, d, w = t.column("Check"), t.column("dtypes"), t.column("Worst")
    return {code_spans(r[c])[0]: (plain(r[d]).split(", "), numbers(plain(r[w]))) for r in t.rows}


def test_findings_come_first_with_their_checks(pages):
    rep, md, page = pages
    # the first section after the summary, before the environment and the matrix, in both pages
    assert [plain(s.title) for s in sections(md, 2)][:3] == ["Findings", "Environment", "Conformance"]
    order = [s.attrs["id"] for s in parse_html(page).root.all("section")]
    assert order.index("findings") < order.index("environment") < order.index("conformance")
    [bk] = section(md, "Findings").subsections()
    assert code_spans(bk.title) == [BAD] and "FAILS" in words(plain(bk.title))
    [f1] = bk.subsections()
    assert plain(f1.title) == f"F1. {TITLE}"
    # its check x dtype rows: exactly the 20 failing checks, each at the 4 dtypes, none of the passing ones
    table = check_table(f1)
    assert {c: d for c, (d, _) in table.items()} == {c: list(DTYPES) for c, _ in FAILING}
    # worst error / tolerance per check, from the records it explains
    for n, (c, _) in enumerate(FAILING):
        assert table[c][1] == [pytest.approx((0.31 + n / 100) / (2.1e-6 * (n + 1)), rel=1e-2)]
    items = dict(plain(i).split(": ", 1) for i in f1.items())
    assert words(items["Cause"])[0] == "fully_masked_rows" and numbers(items["Explains"]) == [80]
    assert "fully_masked_rows=mean_v" in items["Convention"]
    # the line that declares it, as code a maintainer copies
    [conv] = [i for i in f1.items() if i.startswith("Convention")]
    assert code_spans(conv) == ["fully_masked_rows=mean_v", findings.declare_hint("fully_masked_rows", "mean_v")]
    # one example, verbatim: reason, counterexample, repro
    ex = rep.findings[0].example
    assert [b.body for b in f1.fences()] == [ex.counterexample, ex.repro] == [
        counterexample("float64", 0), repro(FAILING[0][0], "float64")]
    assert any(ex.reason in plain(p) for p in f1.paragraphs())
    # the HTML finding: same rows, and the failing matrix cells link to it
    p = parse_html(page).root
    art = p.one("article", id="finding-1")
    rows = {r.all("td")[0].text: r.all("td")[2].text.split(", ") for r in art.one("table").one("tbody").all("tr")}
    assert rows == {c: list(DTYPES) for c, _ in FAILING}
    assert art.one("pre", cls="repro").text == ex.repro
    links = {a.attrs["href"] for td in p.one("table", cls="matrix").all("td", cls="fail") for a in td.all("a")}
    assert links == {"#finding-1"}


def test_failed_records_stay_in_full_in_html_folded(pages):
    rep, md, page = pages
    assert len(rep.failures) == 80 and {f.finding for f in rep.failures} == {"F1"}
    # Markdown: no per-record block for a diagnosed record, one line for the finding's records
    fails = section(md, "Failures")
    assert fails.subsections() == [] and fails.fences() == []
    [line] = fails.items()
    assert code_spans(line)[0] == BAD and 80 in numbers(plain(line))
    # HTML: every record in full, inside the finding's fold; every link lands on an id of the page
    page_tree = parse_html(page)
    assert {r[1:] for r in page_tree.refs} <= page_tree.ids
    p = page_tree.root
    [fold] = p.one("section", id="failures").all("details", cls="records")
    # the finding links to its fold
    assert fold.attrs["id"] in {a.attrs["href"][1:] for a in p.one("article", id="finding-1").all("a")}
    arts = fold.all("article", cls="failure")
    assert len(arts) == 80 and [a.attrs["id"] for a in arts] == [f"failure-{n}" for n in range(1, 81)]
    shown = {(a.all("code")[1].text, a.one("pre", cls="repro").text) for a in arts}
    assert shown == {(c, repro(c, d)) for c, _ in FAILING for d in DTYPES}


def test_markdown_is_at_most_a_fifth(pages):
    """The same 80 failures, before the diagnosis step (each record in full) and with it."""
    _, md, _ = pages
    _, old, _ = render(finding_doc(diagnosed=False))
    assert len(md.encode()) * 5 <= len(old.encode()), (len(md.encode()), len(old.encode()))


def test_declared_conventions_are_not_a_plain_pass(pages):
    rep, md, page = pages
    m = rep.matrix
    v = model.backend_verdict(m, col(rep, DECLARED))
    assert v.status == "declared" and v.word not in ("pass", "conforms")
    assert {"fully_masked_rows=mean_v", "float64_compute=float32"} <= set(v.text.replace(",", " ").split())
    # declaring the spec's own value is no deviation: a plain pass
    assert model.backend_verdict(m, col(rep, SPEC_VALUE)).status == "conforms"
    assert model.backend_verdict(m, col(rep, "numpy")).status == "conforms"
    # the summary names it apart from the plain conforming backends
    summary = model.conformance_summary(rep)
    # failed records, findings, not diagnosed; conform of all, under conventions, fail, skipped
    assert numbers(summary) == [80, 1, 0, 2, 4, 1, 1, 0]
    assert f"{DECLARED}: fully_masked_rows=mean_v, float64_compute=float32" in summary
    # the matrix's verdict row, in both pages
    [table] = section(md, "Conformance").tables()
    verdicts = dict(zip([plain(h) for h in table.head[1:]], [plain(c) for c in table.rows[0][1:]]))
    assert verdicts[DECLARED] == v.text and verdicts["numpy"].split()[1] == "conforms"
    p = parse_html(page).root.one("table", cls="matrix")
    row = p.one("tr", cls="verdict").all("td")
    assert "declared" in row[col(rep, DECLARED)].classes and row[col(rep, DECLARED)].text == v.text
    assert "pass" in row[col(rep, "numpy")].classes


def test_versions_and_conventions_per_backend(pages):
    rep, md, page = pages
    t = section(md, "Environment").tables()[1]
    b, conv, ver = t.column("Backend"), t.column("conventions"), t.column("Versions")
    rows = {code_spans(r[b])[0]: r for r in t.rows}
    assert plain(rows[DECLARED][ver]) == "torch 2.13.0, numpy 2.4.6"
    assert [plain(rows[n][ver]) for n in ("numpy", BAD, SPEC_VALUE)] == ["not reported"] * 3
    assert "fully_masked_rows=mean_v" in plain(rows[DECLARED][conv])
    assert plain(rows[SPEC_VALUE][conv]) == "none declared"  # the spec's own value is no deviation
    env = parse_html(page).root.one("table", cls="backends")
    cells = {r.all("td")[0].text: [c.text for c in r.all("td")] for r in env.one("tbody").all("tr")}
    assert cells[DECLARED][3] == "torch 2.13.0, numpy 2.4.6" and cells["numpy"][3] == "not reported"


def test_older_file_renders_every_record_under_not_diagnosed():
    rep, md, page = render(finding_doc(diagnosed=False))
    assert "finding" not in model.conformance_summary(rep)
    [group] = rep.findings
    assert not group.diagnosed and len(group.failures) == 80
    # the findings section groups them under one heading, the failures section shows each in full
    [bk] = section(md, "Findings").subsections()
    [nd] = bk.subsections()
    assert "not diagnosed" in plain(nd.title) and {c: d for c, (d, _) in check_table(nd).items()} == {
        c: list(DTYPES) for c, _ in FAILING}
    [g] = section(md, "Failures").subsections()
    assert "not diagnosed" in plain(g.title) and code_spans(g.title) == [BAD]
    recs = g.subsections()
    assert len(recs) == 80 and {b.body for s in recs for b in s.fences()} == (
        {counterexample(d, n) for n in range(20) for d in DTYPES} | {repro(c, d) for c, _ in FAILING for d in DTYPES})
    tree = parse_html(page)
    assert {r[1:] for r in tree.refs} <= tree.ids
    p = tree.root
    assert p.one("section", id="failures").all("details") == [] and len(p.all("article", cls="failure")) == 80


def test_partly_diagnosed_records_are_never_dropped():
    doc = finding_doc()
    recs = [r for r in doc["runs"][0]["conformance"]["records"] if r["outcome"] == "failed"]
    recs[0]["finding"] = "F9"                     # an id no finding has, and listed by F1: F1
    del recs[1]["finding"]                       # no key, but listed by F1: F1
    recs[2]["finding"] = "F9"                     # unknown, and not listed anywhere: not diagnosed
    f1 = doc["runs"][0]["conformance"]["findings"][0]
    f1["checks"] = [c for c in f1["checks"] if (c["check"], c["dtype"]) != (recs[2]["check"], recs[2]["dtype"])]
    rep, md, _ = render(doc)
    by = {x.id: {(f.check, f.dtype) for f in x.failures} for x in rep.findings}
    assert set(by) == {"F1", ""} and by[""] == {(recs[2]["check"], recs[2]["dtype"])} and len(by["F1"]) == 79
    assert numbers(model.conformance_summary(rep))[:3] == [80, 1, 1]  # records, findings, not diagnosed
    [g] = section(md, "Failures").subsections()
    [rec] = g.subsections()
    assert code_spans(rec.title) == [BAD, recs[2]["check"]]


def hostile_doc() -> dict:
    doc = finding_doc()
    conf = doc["runs"][0]["conformance"]
    long = "x" * 5000
    conf["backends"][2]["versions"] = {HOSTILE: "1|2", "lib": long}
    conf["backends"][2]["capabilities"]["conventions"] = {"fully_masked_rows": HOSTILE}
    f = conf["findings"][0]
    f.update(title=f"{HOSTILE} | pipe", detail=long, convention={"name": "a|b", "value": HOSTILE})
    f["example"].update(reason=f"{HOSTILE} *bold* _x_", counterexample=f"```\n{HOSTILE}", repro=long)
    return doc


def test_hostile_and_long_strings_stay_text():
    rep, md, page = render(hostile_doc())
    p = parse_html(page)
    assert "script" not in p.tags and HOSTILE not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    art = p.root.one("article", id="finding-1")
    assert art.one("h4").text == f"F1. {HOSTILE} | pipe"
    assert art.one("pre", cls="counterexample").text == f"```\n{HOSTILE}"
    # 5000 characters: cut at the limit, with a marker that says so
    repro_text = art.one("pre", cls="repro").text
    assert repro_text.startswith("x" * findings.LIMIT) and "x" * (findings.LIMIT + 1) not in repro_text
    assert "truncated" in words(repro_text) and 5000 in numbers(repro_text)
    # Markdown: the title is text (no markup), table cells keep their column count
    [f1] = section(md, "Findings").subsections()[0].subsections()
    assert plain(f1.title) == f"F1. {HOSTILE} | pipe"
    # raw only in fenced blocks and code spans (both shown as code), escaped everywhere else
    fenced = {ln for f in fences(md.splitlines()) for ln in f.body.splitlines()}
    raw = [ln for ln in md.splitlines() if "<script>" in ln and ln not in fenced]
    assert raw and all("<script>" not in re.sub(r"(`+).*?\1", "", ln) for ln in raw)
    assert [b.body for b in f1.fences()][0] == f"```\n{HOSTILE}"
    t = section(md, "Environment").tables()[1]
    assert all(len(r) == len(t.head) for r in t.rows)
    row = next(r for r in t.rows if code_spans(r[0]) == [DECLARED])
    assert HOSTILE in plain(row[t.column("Versions")]) and "1|2" in plain(row[t.column("Versions")])


def test_schema_types_the_new_keys(tmp_path):
    doc = finding_doc()
    results.validate(doc)
    results.validate(undiagnosed(doc))  # older files stay valid
    bad = [("cause", lambda d: d["runs"][0]["conformance"]["findings"][0].update(cause="bogus")),
           ("record finding", lambda d: d["runs"][0]["conformance"]["records"][0].update(finding=3)),
           ("convention value", lambda d: d["runs"][0]["conformance"]["backends"][2]["capabilities"][
               "conventions"].update(nan=None)),
           ("versions", lambda d: d["runs"][0]["conformance"]["backends"][2].update(versions=["2.13"])),
           ("checks", lambda d: d["runs"][0]["conformance"]["findings"][0]["checks"].append({"check": "x"}))]
    for what, spoil in bad:
        d = copy.deepcopy(doc)
        spoil(d)
        with pytest.raises(results.ResultsError):
            results.validate(d)
    # and the command line renders a file with findings
    d = write(tmp_path, "run", doc)
    assert cli.main([str(d)]) == 0
    assert json.loads((d / "results.json").read_text()) == doc
    assert section((d / "report.md").read_text(), "Findings").subsections()


def test_shards_findings_merge_by_cause():
    """Each shard numbers its findings from F1: merged, one cause is one finding, and another
    cause under a taken id keeps its records apart."""
    whole = finding_doc()
    half = {c for c, _ in FAILING[:10]}
    shards = []
    for k in (1, 2):
        doc = copy.deepcopy(whole)
        conf = doc["runs"][0]["conformance"]
        conf["plan"] = {"id": "p", "shard": k, "shards": 2, "total": len(conf["records"])}
        conf["records"] = [r for r in conf["records"] if (r["check"] in half) == (k == 1)]
        [f1] = conf["findings"]
        f1["checks"] = [c for c in f1["checks"] if (c["check"] in half) == (k == 1)]
        shards.append(doc)
    # shard 2: F1 is another cause (a crash on one check), F2 the masked rows
    conf2 = shards[1]["runs"][0]["conformance"]
    crash = FAILING[-1][0]
    masked = dict(conf2["findings"][0], id="F2",
                  checks=[c for c in conf2["findings"][0]["checks"] if c["check"] != crash])
    conf2["findings"] = [{"id": "F1", "backend": BAD, "cause": "crash", "title": "raises on T=1",
                          "checks": [{"check": crash, "dtype": d} for d in DTYPES]}, masked]
    for r in conf2["records"]:
        if r.get("finding"):
            r["finding"] = "F1" if r["check"] == crash else "F2"
    merged = results.merge(shards)
    results.validate(merged)
    rep, md, _ = render(merged)
    by = {(x.id, x.cause): {f.check for f in x.failures} for x in rep.findings}
    assert by == {("F1", "fully_masked_rows"): {c for c, _ in FAILING} - {crash}, ("F1.shard2", "crash"): {crash}}
    [bk] = section(md, "Findings").subsections()
    assert [plain(s.title) for s in bk.subsections()] == [f"F1. {TITLE}", "F1.shard2. raises on T=1"]
    assert set(check_table(bk.subsections()[0])) == {c for c, _ in FAILING} - {crash}
