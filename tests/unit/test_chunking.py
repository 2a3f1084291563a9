from __future__ import annotations

from shared.kb.chunking import chunk_document, document_title, html_to_markdown


def test_chunks_follow_headings_and_carry_their_path() -> None:
    text = "# Guide\n\nIntro text here.\n\n## Setup\n\nInstall it. Then run it.\n\n## Use\n\nUse it well."
    chunks = chunk_document(text, kind="markdown", size=200)
    assert [c.heading for c in chunks] == ["Guide", "Guide > Setup", "Guide > Use"]
    assert chunks[1].text == "Install it. Then run it."


def test_long_sections_split_between_sentences_within_the_size() -> None:
    sentence = "This sentence is exactly long enough to matter here. "
    chunks = chunk_document("# H\n\n" + sentence * 40, kind="markdown", size=300)
    assert len(chunks) > 1
    assert all(len(c.text) <= 300 for c in chunks)
    assert all(c.text.endswith(".") for c in chunks)


def test_html_headings_become_sections_and_scripts_vanish() -> None:
    html = "<html><head><title>T</title><script>x=1</script></head><body><h1>A</h1><p>one</p><h2>B</h2><p>two</p></body></html>"
    assert "x=1" not in html_to_markdown(html)
    chunks = chunk_document(html, kind="html", size=100)
    assert [(c.heading, c.text) for c in chunks] == [("A", "one"), ("A > B", "two")]
    assert document_title(html, kind="html", fallback="f") == "T"
