"""Bad input: one DatasetError listing every problem with its file, line and column."""

import numpy as np
import pandas as pd
import pytest

from pkpd.data import from_dataframe, read_dataset
from pkpd.errors import DatasetError


def problems_of(path, **kwargs):
    with pytest.raises(DatasetError) as info:
        read_dataset(path, **kwargs)
    for p in info.value.problems:
        assert p.file == str(path)
    return info.value.problems


def where(problems):
    return [(p.row, p.column) for p in problems]


# (name, csv text, expected [(line, column)], a word of the first message)
CASES = [
    ("missing ID", "TIME,DV\n1,5", [(None, "ID")], "required column ID"),
    ("missing TIME", "ID,DV\n1,5", [(None, "TIME")], "required column TIME"),
    ("no DV nor AMT", "ID,TIME,WT\n1,0,70", [(None, "DV")], "neither a DV nor an AMT"),
    ("non-numeric DV", "ID,TIME,DV\n1,0,5\n1,1,<0.1", [(3, "DV")], "'<0.1' is not a number"),
    ("non-numeric TIME", "ID,TIME,DV\n1,0,5\n1,1h,5", [(3, "TIME")], "not a number"),
    ("infinite value", "ID,TIME,DV\n1,0,inf", [(2, "DV")], "not a number"),
    ("non-numeric covariate", "ID,TIME,DV,SEX\n1,0,5,M", [(2, "SEX")], "covariates=["),
    ("negative TIME", "ID,TIME,DV\n1,-1,5\n1,0,5", [(2, "TIME")], "negative TIME"),
    ("missing TIME value", "ID,TIME,DV\n1,.,5", [(2, "TIME")], "TIME is missing"),
    ("missing ID value", "ID,TIME,DV\n1,0,5\n.,1,5", [(3, "ID")], "ID is missing"),
    ("negative AMT", "ID,TIME,AMT\n1,0,-5", [(2, "AMT")], "negative AMT"),
    ("time goes back", "ID,TIME,DV\n1,0,5\n1,2,5\n1,1,5", [(4, "TIME")], "goes back"),
    ("split subject", "ID,TIME,DV\n1,0,5\n2,0,5\n1,1,5", [(4, "ID")], "contiguous"),
    ("duplicate record", "ID,TIME,DV\n1,0,5\n1,1,6\n1,1,6", [(4, None)], "identical to line 3"),
    ("duplicate numeric text", "ID,TIME,DV\n1,1,6\n1,1.0,6.00", [(3, None)], "line 2"),
    ("ADDL without II", "ID,TIME,AMT,ADDL\n1,0,5,3", [(2, "ADDL")], "II > 0"),
    ("ADDL with II=0", "ID,TIME,AMT,ADDL,II\n1,0,5,3,0", [(2, "ADDL")], "II > 0"),
    ("II without ADDL", "ID,TIME,AMT,II\n1,0,5,12", [(2, "II")], "without ADDL"),
    ("II with ADDL=0", "ID,TIME,AMT,II,ADDL\n1,0,5,12,0", [(2, "II")], "without ADDL"),
    (
        "RATE and DUR inconsistent",
        "ID,TIME,AMT,RATE,DUR\n1,0,100,10,10\n1,24,100,10,9",
        [(3, "DUR")],
        "differs from AMT",
    ),
    ("BLQ without LLOQ value", "ID,TIME,DV,LLOQ,BLQ\n1,1,.,.,1", [(2, "BLQ")], "without an LLOQ"),
    ("BLQ without LLOQ column", "ID,TIME,DV,BLQ\n1,1,.,1", [(2, "BLQ")], "no LLOQ column"),
    ("CENS without LIMIT", "ID,TIME,DV,CENS,LIMIT\n1,1,.,1,.", [(2, "CENS")], "LIMIT"),
    ("CENS out of range", "ID,TIME,DV,CENS,LIMIT\n1,1,5,2,1", [(2, "CENS")], "CENS must be"),
    ("BLQ out of range", "ID,TIME,DV,LLOQ,BLQ\n1,1,5,1,2", [(2, "BLQ")], "BLQ must be"),
    ("DV missing MDV=0", "ID,TIME,DV,MDV\n1,1,.,0", [(2, "DV")], "set MDV=1"),
    ("DV missing no MDV", "ID,TIME,AMT,DV\n1,0,5,.\n1,1,.,.", [(3, "DV")], "DV is missing"),
    ("EVID rxode2", "ID,TIME,AMT,EVID\n1,0,5,101", [(2, "EVID")], "rxode2"),
    ("EVID 5", "ID,TIME,AMT,EVID\n1,0,5,5", [(2, "EVID")], "EVID must be 0"),
    ("EVID not integer", "ID,TIME,AMT,EVID\n1,0,5,1.5", [(2, "EVID")], "not an integer"),
    ("MDV out of range", "ID,TIME,DV,MDV\n1,0,5,2", [(2, "MDV")], "MDV must be 0 or 1"),
    ("dose without AMT", "ID,TIME,AMT,DV,EVID\n1,0,.,.,1", [(2, "AMT")], "without an amount"),
    ("dose without AMT column", "ID,TIME,DV,EVID\n1,0,.,4", [(2, "AMT")], "EVID 4"),
    ("SS", "ID,TIME,AMT,SS,II,ADDL\n1,0,5,1,12,1", [(2, "SS")], "steady-state"),
    ("modelled RATE", "ID,TIME,AMT,RATE\n1,0,5,-2", [(2, "RATE")], "not supported"),
    ("negative RATE", "ID,TIME,AMT,RATE\n1,0,5,-3", [(2, "RATE")], "negative RATE"),
    ("negative DUR", "ID,TIME,AMT,DUR\n1,0,5,-3", [(2, "DUR")], "negative DUR"),
    ("CMT fractional", "ID,TIME,AMT,CMT\n1,0,5,1.5", [(2, "CMT")], "integer code nor a name"),
    ("named DVID missing", "ID,TIME,DV,DVID\n1,0,5,conc\n1,1,5,.", [(3, "DVID")], "DVID"),
    ("column twice", "ID,TIME,DV,dv\n1,0,5,5", [(1, "dv")], "twice"),
    ("two censoring conventions", "ID,TIME,DV,LLOQ,CENS\n1,0,5,1,0", [(None, "CENS")], "two"),
    ("header only", "ID,TIME,DV", [(1, None)], "no records"),
    ("no header", "1,0,5\n1,1,6", [(1, None)], "needs a header"),
    ("semicolons", "ID;TIME;DV\n1;0;5", [(1, None)], "comma-separated"),
    ("too many fields", "ID,TIME,DV\n1,0,5\n1,1,5,7", [(3, None)], "4 fields"),
    ("too few fields", "ID,TIME,DV\n1,0,5\n1,1", [(3, None)], "2 fields"),
]


@pytest.mark.parametrize(
    ("text", "expected", "word"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_each_problem_is_located(tmp_path, text, expected, word):
    path = tmp_path / "bad.csv"
    path.write_text(text + "\n")
    problems = problems_of(path)
    assert where(problems) == expected
    assert word in problems[0].message


def test_all_problems_are_collected(tmp_path):
    path = tmp_path / "many.csv"
    path.write_text(
        "ID,TIME,AMT,DV,EVID\n"
        "1,0,-5,.,1\n"  # negative AMT
        "1,x,.,3,0\n"  # non-numeric TIME
        "1,2,.,.,0\n"  # DV missing
        "1,3,5,.,101\n"  # rxode2 EVID
    )
    problems = problems_of(path)
    assert sorted(where(problems), key=str) == sorted(
        [(2, "AMT"), (3, "TIME"), (4, "DV"), (5, "EVID")], key=str
    )
    message = str(DatasetError(problems))
    assert f"{path}, line 5, 'EVID'" in message


def test_column_named_as_in_file(tmp_path):
    path = tmp_path / "lower.csv"
    path.write_text("id,time,dv\n1,-1,5\n")
    assert where(problems_of(path)) == [(2, "time")]


def test_empty_file(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    problems = problems_of(path)
    assert where(problems) == [(None, None)] and "empty" in problems[0].message
    path.write_text("\n  \n")
    assert "empty" in problems_of(path)[0].message


def test_binary_file(tmp_path):
    path = tmp_path / "junk.csv"
    path.write_bytes(bytes(range(256)) * 4)
    problems = problems_of(path)
    assert len(problems) == 1 and "binary" in problems[0].message


def test_non_utf8_file(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes(b"ID,TIME,DV\n1,0,5\n1,1,\xe9\xff\n")
    problems = problems_of(path)
    assert where(problems) == [(3, None)] and "UTF-8" in problems[0].message


def test_unterminated_quote(tmp_path):
    path = tmp_path / "quote.csv"
    path.write_text('ID,TIME,DV\n1,0,"5\n')
    assert "not a valid CSV" in problems_of(path)[0].message


def test_missing_file(tmp_path):
    problems = problems_of(tmp_path / "nope.csv")
    assert "cannot read" in problems[0].message


def test_unknown_covariate_and_reserved_covariate(tmp_path):
    path = tmp_path / "cov.csv"
    path.write_text("ID,TIME,DV,WT\n1,0,5,70\n")
    problems = problems_of(path, covariates=["AGE", "DV"])
    assert where(problems) == [(None, "AGE"), (None, "DV")]


def test_bad_time_unit(tmp_path):
    path = tmp_path / "ok.csv"
    path.write_text("ID,TIME,DV\n1,0,5\n")
    assert "not a unit of time" in problems_of(path, time_unit="mg")[0].message
    assert "not a unit" in problems_of(path, time_unit="parsec^^")[0].message


def test_legal_nonmem_features_are_accepted(tmp_path):
    # Time restarting after EVID 3/4, AMT on observation rows being 0, MDV=1 without DV,
    # II/ADDL on observation rows (ignored), a consistent RATE and DUR.
    path = tmp_path / "legal.csv"
    path.write_text(
        "ID,TIME,AMT,DV,EVID,MDV,II,ADDL,RATE,DUR\n"
        "1,0,100,.,1,1,24,2,10,10\n"
        "1,5,0,.,0,1,12,.,.,.\n"
        "1,30,.,1,0,0,.,.,.,.\n"
        "1,0,100,.,4,1,.,.,.,.\n"
    )
    assert read_dataset(path).n_doses == 2


def test_dataframe_errors_name_source_and_line():
    df = pd.DataFrame({"ID": [1, 1], "TIME": [-1.0, 0.0], "DV": [np.nan, 1.0]})
    with pytest.raises(DatasetError) as info:
        from_dataframe(df, source="my frame")
    assert [(p.file, p.row, p.column) for p in info.value.problems] == [
        ("my frame", 2, "TIME"),
        ("my frame", 2, "DV"),
    ]


def test_unnamed_column_with_values(tmp_path):
    path = tmp_path / "unnamed.csv"
    path.write_text("ID,TIME,,DV\n1,0,3,5\n")
    problems = problems_of(path)
    assert where(problems) == [(1, None)] and "no name" in problems[0].message


def test_empty_dataframe():
    with pytest.raises(DatasetError, match="no records"):
        from_dataframe(pd.DataFrame({"ID": [], "TIME": []}), source="empty frame")
