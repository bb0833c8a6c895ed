import pytest

from lowbit.data import NOVELS, austen, austen_text, text_file


def test_text_file(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("first line\nsecond ☃\n", encoding="utf-8")
    assert text_file(path) == "first line\nsecond ☃\n"
    with pytest.raises(FileNotFoundError):
        text_file(tmp_path / "missing.txt")


def test_unknown_novel_lists_the_six():
    with pytest.raises(ValueError, match="prideprejudice"):
        austen("ulysses")


@pytest.mark.real
def test_six_novels_and_their_sizes():
    lengths = {novel: len(austen_text(novel)) for novel in NOVELS}
    assert all(n > 400_000 for n in lengths.values()), lengths
    assert 3_900_000 < sum(lengths.values()) < 4_100_000
    assert len(austen_text()) == sum(lengths.values()) + len(NOVELS) - 1


@pytest.mark.real
def test_known_first_lines():
    pride = austen("prideprejudice")
    assert pride[0] == "PRIDE AND PREJUDICE"
    assert "It is a truth universally acknowledged, that a single man in possession" in pride[:12]
    assert austen("emma")[:3] == ["EMMA", "", "By Jane Austen"]
    assert austen("persuasion")[0] == "Persuasion"
    assert austen_text("sensesensibility").startswith("SENSE AND SENSIBILITY\n")


def test_text_file_reads_jsonl_text_fields(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"text": "first line", "id": 1}\n\n{"text": "second ☃"}\n', encoding="utf-8")
    assert text_file(path) == "first line\nsecond ☃"
    path.write_text('{"text": "ok"}\n{"body": "no text"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"corpus.jsonl:2: expected an object with a string 'text' field"):
        text_file(path)
    path.write_text('{"text": "ok"}\nnot json\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"corpus.jsonl:2: not a JSON object"):
        text_file(path)
