"""The license of a merge: read from the parents' own model cards on the Hub, or set by the publisher.

A Hub parent's ``README.md`` is downloaded at the recorded revision and its ``license`` metadata read; local and
in-memory parents have no recorded license. One license declared by the parents is inherited; different ones are
not (the card says so, with a warning); ``--license`` overrides both.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..files import CARD_NAME
from ..report import InputRecord


@dataclass
class Parent:
    """One parent of an output (its ``role`` on the card: ``base``, ``task 1``...) and the license read for it,
    with a note saying where that came from (or why it is unknown)."""

    role: str
    record: InputRecord
    license: str | None = None
    license_name: str | None = None
    license_link: str | None = None
    license_note: str = ""

    @property
    def hub_id(self) -> str | None:
        return self.record.hub_id

    @property
    def name(self) -> str:
        return self.record.display_name

    @property
    def license_key(self) -> str | None:
        """The license as shown: ``other (NAME)`` for a named custom license."""
        if not self.license:
            return None
        return f"other ({self.license_name})" if self.license == "other" and self.license_name else self.license


@dataclass
class LicenseDecision:
    """The card's license: its metadata (``license``, ``license_name``, ``license_link``), the sentence of its
    License section, and warnings for the publisher."""

    metadata: dict
    sentence: str
    warnings: list[str] = field(default_factory=list)


def read_hub_license(parent: Parent, token) -> None:
    """Fill ``parent``'s license from its model card on the Hub (at the recorded revision); any failure only
    leaves the license unknown, with a note."""
    from huggingface_hub import ModelCard, hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RemoteEntryNotFoundError

    try:
        path = hf_hub_download(parent.hub_id, CARD_NAME, revision=parent.record.revision, token=token)
    except RemoteEntryNotFoundError:
        parent.license_note = "its repository has no README.md"
        return
    except LocalEntryNotFoundError:
        parent.license_note = "its README.md is not in the local cache (offline)"
        return
    except Exception as exc:  # noqa: BLE001 - any failure only means the license stays unknown
        parent.license_note = f"its README.md could not be downloaded ({type(exc).__name__})"
        return
    try:
        data = ModelCard.load(path, ignore_metadata_errors=True).data
    except Exception as exc:  # noqa: BLE001
        parent.license_note = f"its README.md could not be parsed ({type(exc).__name__})"
        return
    parent.license = data.get("license") or None
    if isinstance(parent.license, list):  # a few cards list several
        parent.license = ", ".join(map(str, parent.license))
    parent.license_name = data.get("license_name")
    parent.license_link = data.get("license_link")
    parent.license_note = "from its model card" if parent.license else "its model card declares no license"


def resolve_licenses(parents: list[Parent], token, override: str | None) -> LicenseDecision:
    """Read every Hub parent's license and decide the card's (``override`` wins)."""
    for parent in parents:
        if parent.hub_id:
            read_hub_license(parent, token)
        elif parent.record.source == "local":
            parent.license_note = "a local folder: its license is not recorded"
        else:
            parent.license_note = "a model passed in memory: its license is not recorded"
    declared = {p.license_key for p in parents if p.license_key}
    undeclared = [p for p in parents if not p.license_key]
    warnings: list[str] = []
    if len(declared) > 1:
        listing = "; ".join(f"{p.name}: {p.license_key or 'not declared'}" for p in parents)
        warnings.append(f"the parent models declare different licenses ({listing}); check that their terms allow "
                        "this merge and set the license of the result yourself (--license)")
    elif declared and undeclared:
        warnings.append(f"the license {next(iter(declared))!r} is inherited from the parents that declare one; "
                        f"no license could be read for {', '.join(p.name for p in undeclared)}")
    if override:
        meta = {"license": override}
        sentence = f"The publisher set the license to `{override}`."
    elif len(declared) == 1:
        source = next(p for p in parents if p.license_key)
        meta = {"license": source.license, "license_name": source.license_name, "license_link": source.license_link}
        sentence = f"`{source.license_key}`, inherited from the parent models."
    elif declared:
        meta = {"license": "other", "license_name": "mixed-parent-licenses"}
        sentence = "The parent models declare different licenses (listed above); no single license is inherited."
    else:
        meta = {}
        sentence = ("None of the parent models' licenses could be read, so none is declared here; "
                    "this repository inherits the terms of its parents (pass `--license` to declare one).")
    return LicenseDecision({k: v for k, v in meta.items() if v}, sentence, warnings)
