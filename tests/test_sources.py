"""The broad mix's source readers on small hand-written inputs: Debian package indexes, roff man
pages, POD and reStructuredText FAQs, cheat sheets and e-mails; same-group hard negatives; splits
by each source's unit; ``.deb`` archives; and the one-line error where apt is missing."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from data import prepare
from data.sources import archives, cheat, debian, faqs, manpages
from data.sources.cheat import comment_command_pairs
from data.sources.debian import PackageDescription, parse_descriptions
from data.sources.faqs import pod_questions, rst_sections
from data.sources.manpages import roff_sections
from data.sources.pairs import GroupedPair, grouped_examples
from data.sources.spam_assassin import clean_subject, subject_and_body
from data.sources.split import split_of

PACKAGES_INDEX = """Package: 0ad
Version: 0.0.26-3
Section: games
Description-md5: d943

Package: 0ad-data
Source: 0ad-data (0.0.26-1)
Section: games

Package: hello
Section: devel
Description: example package
 with a continuation line
Description-md5: aaaa

Package: libhello-dev
Source: hello
Section: libdevel

Package: hello-old
Section: oldlibs

Package: nonfree-tool
Source: tools (1.0-2)
Section: non-free/utils

Package: terse
Section: utils

Package: hello
Section: misc
"""
TRANSLATION_INDEX = """Package: 0ad
Description-md5: d943
Description-en: Real-time strategy game of ancient warfare
 0 A.D. is a free, open-source real-time strategy game.

Package: 0ad-data
Description-md5: 2658
Description-en: Real-time strategy game (data files)
 0 A.D. is a free, open-source real-time strategy game.
 .
 This package contains the data files.

Package: hello
Description-md5: aaaa
Description-en: example package based on GNU hello
 The GNU hello program produces a familiar, friendly greeting.
 .
 It allows non-programmers to use a classic computer science tool.

Package: libhello-dev
Description-md5: bbbb
Description-en: development files for hello
 The GNU hello library, headers and static library for developers.

Package: hello-old
Description-md5: cccc
Description-en: transitional package for hello
 This is a transitional package. It can safely be removed now.

Package: nonfree-tool
Description-md5: dddd
Description-en: a tool from the non-free area
 A tool whose description is long enough.

Package: terse
Description-md5: 9999
Description-en: a terse one
 Four words only here.

Package: orphan
Description-md5: eeee
Description-en: listed only in the translations
 This package has no entry in the Packages index at all.

Package: hello
Description-md5: ffff
Description-en: a second entry for hello
 From another suite, ignored because the first entry wins.
"""


def test_debian_descriptions_join_the_indexes_and_drop_siblings_and_placeholders() -> None:
    # 0ad-data repeats 0ad's opening paragraph, libhello-dev is a -dev package, hello-old is
    # transitional, terse has four words, orphan has no Packages entry, and hello's second
    # entry (another suite) loses to its first.
    assert parse_descriptions(PACKAGES_INDEX, TRANSLATION_INDEX) == [
        PackageDescription("0ad", "0ad", "games", "Real-time strategy game of ancient warfare",
                           ("0 A.D. is a free, open-source real-time strategy game.",)),
        PackageDescription("hello", "hello", "devel", "example package based on GNU hello",
                           ("The GNU hello program produces a familiar, friendly greeting.",
                            "It allows non-programmers to use a classic computer science tool.")),
        PackageDescription("nonfree-tool", "tools", "utils", "a tool from the non-free area",
                           ("A tool whose description is long enough.",)),
    ]


MAN_PAGE = r""".\" Copyright lines are comments
.TH STAT 2 2023-02-05 "Linux man-pages 6.03"
.de XX
.B never shown
..
.SH NAME
stat, fstat \- get file status
.SH SYNOPSIS
.nf
.B #include <sys/stat.h>
.fi
.SH DESCRIPTION
These functions return information about a
.IR file ,
in the buffer pointed to by
.IR statbuf .
No permissions are required\[em]but see
.BR path_resolution (7).
.IP \(bu 3
It's \fBbold\fP and \fIitalic\fR, with \(lqquotes\(rq, \e and \[u00E9].
.TS
allbox;
l l.
st_mode	file type
.TE
.SS "The stat structure"
.B
Bold next line
.SH "SEE ALSO"
.BR ls (1)
"""


def test_roff_page_reads_as_plain_text_per_section() -> None:
    description = (
        "These functions return information about a file, in the buffer pointed to by statbuf. "
        "No permissions are required\u2014but see path_resolution(7). \u2022 It's bold and italic, "
        'with "quotes", \\ and \u00e9. st_mode file type The stat structure Bold next line'
    )
    assert roff_sections(MAN_PAGE) == {
        "NAME": "stat, fstat - get file status",
        "SYNOPSIS": "#include <sys/stat.h>",
        "DESCRIPTION": description,
        "SEE ALSO": "ls(1)",
    }
    assert roff_sections(MAN_PAGE, ("NAME", "DESCRIPTION")) == {"NAME": "stat, fstat - get file status", "DESCRIPTION": description}


PERL_FAQ = """=head1 NAME

perlfaq4 - Data Manipulation

=head1 Data: Numbers

=head2 Why is C<int()> broken?

Your C<int()> is most probably working just fine. Compare with C<< $a <=> $b >>
and E<gt> or L<the manual|perlfunc/int>.

    printf "%.2f", 19.95;

=over 4

=item Rounding

See L<POSIX>.

=back

=begin html

<p>never shown</p>

=end html

=head2 How do I get X<random> random numbers?

Use C<rand>.

=head1 AUTHOR

Nobody.
"""


def test_pod_questions_and_answers() -> None:
    assert list(pod_questions(PERL_FAQ)) == [
        ("Why is int() broken?", 'Your int() is most probably working just fine. Compare with $a <=> $b and > or the '
                                 'manual. printf "%.2f", 19.95; Rounding See POSIX.'),
        ("How do I get random numbers?", "Use rand."),
    ]


PYTHON_FAQ = """=============
Library FAQ
=============

.. only:: html

   .. contents::

General Library Questions
=========================

How do I find a module?
-----------------------

Check the :ref:`Library Reference <library-index>` and :func:`~os.path.join`; see
`PyPI <https://pypi.org>`_ or ``pip``. It is *very* **easy**::

   import os

.. XXX a comment
   that spans lines

Is there a thing?
-----------------

Yes\\\\ indeed.
"""


def test_rst_sections_skip_the_document_title_and_resolve_markup() -> None:
    assert list(rst_sections(PYTHON_FAQ)) == [
        ("General Library Questions", ""),
        ("How do I find a module?", "Check the Library Reference and join; see PyPI or pip. It is very easy: import os"),
        ("Is there a thing?", "Yes\\ indeed."),
    ]


def test_cheat_sheet_blocks() -> None:
    sheet = (
        "# To extract an archive:\ntar -xvf foo.tar\n\n"
        "# To create an archive\n# from a folder:\ntar -cvf foo.tar foo/\n"
        "# To list an archive:\ntar -tvf foo.tar\nstray command without a comment\n\n"
        "free text without a command\n"
    )
    assert list(comment_command_pairs(sheet)) == [
        ("To extract an archive", "tar -xvf foo.tar"),
        ("To create an archive from a folder", "tar -cvf foo.tar foo/"),
        ("To list an archive", "tar -tvf foo.tar\nstray command without a comment"),
    ]


MULTIPART_MESSAGE = """From someone@example.com  Thu Aug 22 12:46:39 2002
Subject: Re: [zzzzteana] Re: Alexander the Great
MIME-Version: 1.0
Content-Type: multipart/alternative; boundary="XYZ"

--XYZ
Content-Type: text/plain; charset=us-ascii

Martin wrote:
> the sculptor judged the limestone ideal
The statue would be 240 ft high.

It would face the sea.
-- 
Steve, who signs off
--XYZ
Content-Type: text/html

<p>Never read: the plain part wins</p>
--XYZ--
"""
HTML_MESSAGE = """Subject: =?iso-8859-1?q?Caf=E9_deals?=
Content-Type: text/html

<html><style>p {color: red}</style><p>Save&nbsp;50% &amp; more</p></html>
"""


def test_email_subject_and_body_lose_prefixes_quotes_signature_and_markup() -> None:
    assert subject_and_body(MULTIPART_MESSAGE) == ("Alexander the Great", "The statue would be 240 ft high. It would face the sea.")
    assert subject_and_body(HTML_MESSAGE) == ("Caf\u00e9 deals", "Save 50% & more")
    assert clean_subject("Fwd: RE: [ILUG] [SAtalk] re: topic") == "topic"


def test_grouped_examples_dedupe_and_draw_negatives_from_another_unit_of_the_group() -> None:
    pairs = [
        GroupedPair("q1", "doc one", "g", "u1"),
        GroupedPair("q2", "doc two", "g", "u1"),
        GroupedPair("q3", "doc three", "g", "u2"),
        GroupedPair("Q1", "doc four", "g", "u2"),  # same query as q1 once normalised: dropped
        GroupedPair("q5", "Doc  One", "g", "u3"),  # same positive as q1 once normalised: dropped
        GroupedPair("q6", "doc six", "lonely", "u9"),  # no other unit in its group: no example
        GroupedPair("same text", "Same  text", "g", "u4"),  # the query is its positive: dropped
        GroupedPair("q7", "doc seven", "h"),  # no unit: each pair is its own
        GroupedPair("q8", "doc eight", "h"),
    ]
    examples = {e.query: e for e in grouped_examples(pairs, "instruction", "set")}
    assert sorted(examples) == ["q1", "q2", "q3", "q7", "q8"]
    assert examples["q1"].negatives == examples["q2"].negatives == ("doc three",)  # u2 holds only q3 now
    assert examples["q3"].negatives[0] in {"doc one", "doc two"}
    assert examples["q7"].negatives == ("doc eight",) and examples["q8"].negatives == ("doc seven",)
    assert {(e.instruction, e.dataset) for e in examples.values()} == {("instruction", "set")}


# Each training source's loader replaced by synthetic rows whose query names its split unit.
SYNTHETIC_SOURCES = {
    "debian": (debian, "load_descriptions", debian.summary_to_description_examples, "debian",
               lambda: tuple(PackageDescription(f"pkg{i}", f"src{i // 2}", f"sec{i % 5}", f"src{i // 2} summary {i}",
                                                (f"package {i} does things",)) for i in range(400))),
    "manpages": (manpages, "load_pages", manpages.name_to_description_examples, "manpages",
                 lambda: tuple((f"page{i}.2", str(i % 3), {"NAME": f"page{i}.2 - thing", "DESCRIPTION": f"page {i} text"})
                               for i in range(400))),
    "cheat": (cheat, "load_sheets", cheat.comment_to_command_examples, "cheat",
              lambda: {f"tool{i}": f"# do a\ncmd{i} a\n\n# do b\ncmd{i} b\n" for i in range(200)}),
    "python-faq": (faqs, "load_python_faq", faqs.python_faq_examples, "python-faq",
                   lambda: tuple((f"file{i % 4}", f"question{i}?", f"answer number {i} has words") for i in range(400))),
}


@pytest.mark.parametrize("name", sorted(SYNTHETIC_SOURCES))
def test_training_sources_split_by_unit_with_negatives_inside_the_split(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    module, loader, build, split_source, rows = SYNTHETIC_SOURCES[name]
    monkeypatch.setattr(module, loader, rows)
    unit_of_query = {"debian": lambda q: q.split()[0], "manpages": lambda q: q.split()[0],
                     "cheat": lambda q: q.split(":")[0], "python-faq": lambda q: q}[name]
    queries = {}
    for split in ("train", "dev", "test"):
        examples = build(split, "instruction")
        queries[split] = {e.query for e in examples}
        assert all(split_of(split_source, unit_of_query(e.query)) == split for e in examples)
        positives = {e.positive for e in examples}
        assert all(e.negatives[0] in positives and e.negatives[0] != e.positive for e in examples)
    assert not (queries["train"] & queries["dev"] or queries["train"] & queries["test"] or queries["dev"] & queries["test"])
    assert len(queries["train"]) > 4 * len(queries["dev"]) > 0 and queries["test"]


def test_deb_members_read_through_dpkg_deb(tmp_path: Path) -> None:
    root = tmp_path / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        "Package: echo-fixture\nVersion: 1.0\nArchitecture: all\nMaintainer: Test <t@example.com>\nDescription: fixture\n"
    )
    (root / "usr/share/doc/fixture").mkdir(parents=True)
    (root / "usr/share/doc/fixture/a.txt").write_text("first file\n")
    (root / "usr/share/doc/fixture/b.md").write_text("second file\n")
    deb = tmp_path / "echo-fixture_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(deb)], check=True, capture_output=True)
    assert archives.read_matching_members(deb, re.compile(r"\./usr/share/doc/fixture/\w+\.txt")) == {
        "./usr/share/doc/fixture/a.txt": b"first file\n"
    }
    assert set(archives.member_names(deb)) == {"./usr/share/doc/fixture/a.txt", "./usr/share/doc/fixture/b.md"}
    assert archives.read_members(deb, ["./usr/share/doc/fixture/b.md"]) == {"./usr/share/doc/fixture/b.md": b"second file\n"}


def test_missing_apt_ends_the_prepare_command_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ECHO_CACHE", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "no-tools-here"))
    monkeypatch.setattr(debian, "load_descriptions", debian.load_descriptions.__wrapped__)  # no cached index
    assert prepare.main(["--mix", "broad", "--only", "training"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("error: apt-get not found: the Debian sources")
    assert not (tmp_path / "training-mixes" / "broad").exists()


def test_held_out_sources_feed_no_training_dataset() -> None:
    training_sources = {source.name: source.source for source in prepare.TRAINING_SOURCES}
    for mix in prepare.MIXES.values():
        assert set(mix) <= set(training_sources)
        for dataset in mix:
            assert not any(held_out in training_sources[dataset] for held_out in prepare.HELD_OUT_SOURCES), dataset
    assert len(prepare.MIXES["broad"]) >= 8
    assert len({prepare.SOURCE_BY_NAME[d].instruction for d in prepare.MIXES["broad"]}) == len(prepare.MIXES["broad"])
