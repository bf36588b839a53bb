"""One parser of locations: schemes, github:// files and trees, and the reader by scheme."""

from __future__ import annotations

import pytest

from shared.architecture.loading import LoadedArchitecture
from shared.errors import UsageError
from shared.locations import (
    SCHEMES,
    ArchitecturesByScheme,
    GitHubLocation,
    parse_github_file,
    parse_github_tree,
    scheme_of,
)


def test_schemes_tell_remote_locations_from_local_paths() -> None:
    assert SCHEMES == ("gs", "github")
    assert [scheme_of(u) for u in ("gs://b/o", "github://o/r/f@main", "dir/a.yaml")] == [
        "gs",
        "github",
        "",
    ]


def test_a_github_file_and_tree_round_trip() -> None:
    file = parse_github_file("github://acme/shop/deploy/arch.yaml@release/1")
    assert file == GitHubLocation("acme", "shop", "release/1", "deploy/arch.yaml")
    assert file.file_uri() == "github://acme/shop/deploy/arch.yaml@release/1"
    tree = parse_github_tree("github://acme/shop@abc123/services")
    assert tree == GitHubLocation("acme", "shop", "abc123", "services")
    assert tree.tree_uri() == "github://acme/shop@abc123/services"
    assert GitHubLocation("acme", "shop", "abc123", "").tree_uri() == "github://acme/shop@abc123"


@pytest.mark.parametrize(
    ("uri", "why"),
    [
        ("gs://b/o", "does not start with github://"),
        ("github://acme/arch.yaml@main", "names no file"),
        ("github://acme/shop/../x.yaml@main", "leaves the repository"),
        ("github://acme/shop/x.yaml@", "no valid @REF"),
    ],
    ids=["not-github", "no-file", "dot-dot", "no-ref"],
)
def test_a_bad_github_file_says_what_is_wrong_and_the_fix(uri: str, why: str) -> None:
    with pytest.raises(ValueError, match=why) as caught:
        parse_github_file(uri)
    assert "github://OWNER/REPO/PATH@REF" in str(caught.value)


class Echo:
    def read(self, uri: str) -> LoadedArchitecture:
        raise LookupError(uri)


def test_the_reader_by_scheme_hands_each_location_to_its_reader() -> None:
    readers = ArchitecturesByScheme({"gs": Echo()})
    with pytest.raises(LookupError, match="gs://b/o"):
        readers.read("gs://b/o")
    with pytest.raises(UsageError, match="github://OWNER/REPO/PATH@REF"):
        readers.read("s3://b/o")
