"""Integrity of Megatron-Bridge ``torch_dist`` checkpoints, checked before anything is loaded.

A checkpoint directory (``checkpoint.save``) holds one ``iter_NNNNNNN`` directory per save and
two tracker files naming the newest committed one (``latest_train_state.pt``, Bridge's, read
first; ``latest_checkpointed_iteration.txt``, Megatron-LM's). Bridge writes a save in this order:
the shards ``__<rank>_<i>.distcp`` (every rank), ``.metadata`` (torch DCP's index of every
shard's byte ranges, written to a temporary name and renamed) and ``metadata.json`` (rank 0), a
barrier, then on rank 0
``iter_*/train_state.pt``, the trackers and ``iter_*/run_config.yaml``. A process killed anywhere
in that sequence leaves an iteration that is missing some of these files, or has short ones.

``check_iteration`` finds exactly that, without torch's reader: every file ``.metadata`` lists
exists and is long enough for the byte ranges it holds; ``metadata.json``/``run_config.yaml`` parse;
``train_state.pt`` (and ``common.pt`` where megatron writes one; zip archives) pass their own
CRC check. After a successful save
``write_manifest`` records every file's size and CRC-32 in ``nemo_vwn_manifest.json``: it marks
the save as complete (it is written last) and lets later damage of the same length be caught.

The manifest is what separates the two kinds of damage (``nemo_vwn.bridge.resume`` acts on it):
an iteration without a manifest that fails the checks is an *interrupted save* (resume falls back
to the newest intact iteration, with a warning); one with a manifest that fails them was complete
and has been damaged since (*damaged*: an error that names the file and the intact iteration).

    report = verify_checkpoint_dir("runs/x/checkpoints")   # every iteration's status
    iter_dir = require_intact("runs/x/checkpoints")        # newest intact iteration, else an error
"""

from __future__ import annotations

import argparse
import json
import os
import re
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import Optional

TRACKER_PT = "latest_train_state.pt"
TRACKER_TXT = "latest_checkpointed_iteration.txt"
MANIFEST = "nemo_vwn_manifest.json"
ITERATION_DIR = re.compile(r"^iter_(\d{7})$")
# Checksums are computed/verified for checkpoints up to this size (bytes; larger ones: sizes only).
CHECKSUM_LIMIT = int(float(os.environ.get("NEMO_VWN_CHECKSUM_MAX_GB", "8")) * (1 << 30))
_CHUNK = 1 << 22


class CheckpointError(ValueError):
    """A checkpoint directory cannot be resumed from as it is (names the file and what to do)."""


@dataclass
class IterationStatus:
    iteration: int
    path: str
    problems: list = field(default_factory=list)  # each names the file it is about
    has_manifest: bool = False
    checksummed: bool = False
    total_bytes: int = 0

    @property
    def intact(self) -> bool:
        return not self.problems

    @property
    def state(self) -> str:
        if self.intact:
            return "intact"
        return "damaged" if self.has_manifest else "incomplete"


@dataclass
class CheckpointReport:
    path: str
    iterations: list = field(default_factory=list)  # IterationStatus, ascending
    tracker_iteration: Optional[int] = None  # what the trackers name (None: no readable tracker)
    tracker_problems: list = field(default_factory=list)

    def status(self, iteration: int) -> Optional[IterationStatus]:
        return next((s for s in self.iterations if s.iteration == iteration), None)

    @property
    def newest_intact(self) -> Optional[IterationStatus]:
        intact = [s for s in self.iterations if s.intact]
        return intact[-1] if intact else None


def iteration_dir(save_dir: str, iteration: int) -> str:
    return os.path.join(save_dir, f"iter_{iteration:07d}")


def list_iterations(save_dir: str) -> list:
    """The iterations with an ``iter_NNNNNNN`` directory under ``save_dir``, ascending."""
    if not os.path.isdir(save_dir):
        return []
    found = [ITERATION_DIR.match(name) for name in os.listdir(save_dir)]
    return sorted(int(m.group(1)) for m in found
                  if m and os.path.isdir(os.path.join(save_dir, m.group(0))))


# --------------------------------------------------------------------------- one iteration
def _zip_problem(path: str) -> Optional[str]:
    """None when the torch.save archive at ``path`` is whole (every member's CRC checks)."""
    if not os.path.isfile(path):
        return "missing"
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
        return None if bad is None else f"corrupt member {bad}"
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        return f"unreadable ({type(exc).__name__}: {exc or 'truncated'})"


def _shard_extents(iter_dir: str) -> dict:
    """relative path -> bytes the shard must hold, from torch DCP's ``.metadata``."""
    from torch.distributed.checkpoint import FileSystemReader

    metadata = FileSystemReader(iter_dir).read_metadata()
    needed: dict[str, int] = {}
    for info in (metadata.storage_data or {}).values():
        end = int(info.offset) + int(info.length)
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), end)
    return needed


def file_crc32(path: str) -> str:
    crc = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return f"{crc:08x}"


def check_iteration(iter_dir: str, checksums: Optional[bool] = None) -> IterationStatus:
    """The status of one ``iter_*`` directory (see the module docstring for what is checked).

    ``checksums``: verify the manifest's CRC-32s (None: when the checkpoint is at most
    ``CHECKSUM_LIMIT`` bytes); sizes are always checked.
    """
    match = ITERATION_DIR.match(os.path.basename(os.path.normpath(iter_dir)))
    status = IterationStatus(int(match.group(1)) if match else -1, iter_dir)
    problem = status.problems.append

    def named(name):
        return os.path.join(iter_dir, name)

    if not os.path.isdir(iter_dir):
        problem(f"{iter_dir}: missing directory")
        return status
    for name in ("metadata.json", "run_config.yaml"):
        path = named(name)
        if not os.path.isfile(path) or os.path.getsize(path) == 0:
            problem(f"{path}: {'missing' if not os.path.isfile(path) else 'empty'}")
    if not status.problems:
        try:
            with open(named("metadata.json")) as handle:
                json.load(handle)
        except ValueError as exc:
            problem(f"{named('metadata.json')}: not valid JSON ({exc})")
    for name in ("common.pt", "train_state.pt"):  # common.pt: older megatron versions only
        why = _zip_problem(named(name))
        if why and not (name == "common.pt" and why == "missing"):
            problem(f"{named(name)}: {why}")
    meta = named(".metadata")
    needed: dict = {}
    if not os.path.isfile(meta) or os.path.getsize(meta) == 0:
        problem(f"{meta}: {'missing' if not os.path.isfile(meta) else 'empty'} (the shard index)")
    else:
        try:
            needed = _shard_extents(iter_dir)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure means a torn index
            problem(f"{meta}: unreadable ({type(exc).__name__}: {exc})")
    for rel, length in sorted(needed.items()):
        path = named(rel)
        if not os.path.isfile(path):
            problem(f"{path}: missing (listed in .metadata)")
        elif os.path.getsize(path) < length:
            problem(f"{path}: {os.path.getsize(path)} bytes, .metadata needs {length}")
    manifest_path = named(MANIFEST)
    if os.path.isfile(manifest_path):
        status.has_manifest = True
        _check_manifest(iter_dir, manifest_path, status, checksums)
    try:  # another rank may be moving an interrupted save aside meanwhile
        status.total_bytes = sum(os.path.getsize(named(n)) for n in os.listdir(iter_dir)
                                 if os.path.isfile(named(n)))
    except OSError:
        pass
    return status


def _check_manifest(iter_dir: str, manifest_path: str, status: IterationStatus,
                    checksums: Optional[bool]) -> None:
    try:
        with open(manifest_path) as handle:
            files = json.load(handle)["files"]
    except (ValueError, KeyError, OSError) as exc:
        status.problems.append(f"{manifest_path}: unreadable ({exc})")
        return
    total = sum(entry["size"] for entry in files.values())
    verify = checksums if checksums is not None else total <= CHECKSUM_LIMIT
    status.checksummed = bool(verify)
    for rel, entry in sorted(files.items()):
        path = os.path.join(iter_dir, rel)
        if not os.path.isfile(path):
            status.problems.append(f"{path}: missing (listed in {MANIFEST})")
        elif os.path.getsize(path) != entry["size"]:
            status.problems.append(f"{path}: {os.path.getsize(path)} bytes, {MANIFEST} says "
                                   f"{entry['size']}")
        elif verify and entry.get("crc32") and file_crc32(path) != entry["crc32"]:
            status.problems.append(f"{path}: CRC-32 differs from {MANIFEST} (content changed)")


def write_manifest(iter_dir: str, checksums: Optional[bool] = None) -> str:
    """Record every file of a completed save (size, CRC-32) in ``iter_dir/nemo_vwn_manifest.json``.

    Written through a temporary file and ``os.replace``: a reader sees the whole manifest or none.
    """
    files = {}
    for root, _, names in os.walk(iter_dir):
        for name in names:
            if name == MANIFEST or name.endswith(".tmp"):
                continue
            path = os.path.join(root, name)
            files[os.path.relpath(path, iter_dir)] = {"size": os.path.getsize(path)}
    total = sum(entry["size"] for entry in files.values())
    if checksums if checksums is not None else total <= CHECKSUM_LIMIT:
        for rel, entry in files.items():
            entry["crc32"] = file_crc32(os.path.join(iter_dir, rel))
    path = os.path.join(iter_dir, MANIFEST)
    with open(path + ".tmp", "w") as handle:
        json.dump({"format": 1, "files": files}, handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(path + ".tmp", path)
    return path


# --------------------------------------------------------------------------- a save directory
def read_saved_config(iteration_dir: str) -> dict:
    """The ``run_config.yaml`` of a checkpoint iteration as a dict (no megatron import)."""
    import yaml

    path = os.path.join(iteration_dir, "run_config.yaml")
    try:
        with open(path) as handle:
            saved = yaml.safe_load(handle)
    except (OSError, yaml.YAMLError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc
    if not isinstance(saved, dict) or not isinstance(saved.get("model"), dict):
        raise CheckpointError(f"{path} has no model section: not a Megatron-Bridge checkpoint")
    return saved


def read_tracker(save_dir: str) -> tuple:
    """(iteration or None, problems): what the trackers name, Bridge's first as Bridge reads."""
    problems = []
    pt = os.path.join(save_dir, TRACKER_PT)
    if os.path.exists(pt):
        why = _zip_problem(pt)
        if why is None:
            import torch

            try:
                state = torch.load(pt, map_location="cpu", weights_only=False)
                return int(state["step"]), problems
            except Exception as exc:  # noqa: BLE001
                why = f"unreadable ({type(exc).__name__}: {exc})"
        problems.append(f"{pt}: {why}")
    txt = os.path.join(save_dir, TRACKER_TXT)
    if os.path.exists(txt):
        with open(txt) as handle:
            text = handle.read().strip()
        if text.isdigit() and int(text) > 0:
            return int(text), problems
        problems.append(f"{txt}: {'empty' if not text else f'not an iteration ({text!r})'}")
    return None, problems


def verify_checkpoint_dir(path: str, checksums: Optional[bool] = None) -> CheckpointReport:
    """Status of every iteration under a save directory, or of ``path`` itself if it is one
    ``iter_*`` directory. Reads only; never loads tensors."""
    path = os.path.abspath(path)
    if ITERATION_DIR.match(os.path.basename(path)):
        return CheckpointReport(path, [check_iteration(path, checksums)])
    if not os.path.isdir(path):
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    report = CheckpointReport(path)
    report.tracker_iteration, report.tracker_problems = read_tracker(path)
    report.iterations = [check_iteration(iteration_dir(path, i), checksums)
                         for i in list_iterations(path)]
    return report


def require_intact(path: str, checksums: Optional[bool] = None) -> str:
    """The newest intact iteration directory under ``path`` (a save directory or one ``iter_*``
    directory), or a ``CheckpointError`` naming the damaged file and the intact alternatives.

    For tools that read a checkpoint (``nemo-vwn convert``): call before loading it.
    """
    report = verify_checkpoint_dir(path, checksums)
    if not report.iterations:
        raise CheckpointError(f"no checkpoint under {report.path} (no iter_* directory)")
    if len(report.iterations) == 1 and report.path == report.iterations[0].path:
        status = report.iterations[0]
        if not status.intact:
            raise CheckpointError(f"checkpoint {status.path} is {status.state}: "
                                  f"{status.problems[0]}")
        return status.path
    newest = report.iterations[-1]
    if not newest.intact:
        good = report.newest_intact
        raise CheckpointError(
            f"the newest checkpoint, iteration {newest.iteration}, is {newest.state}: "
            f"{newest.problems[0]}; "
            + (f"the newest intact one is {good.path} (pass that directory)" if good
               else "no intact iteration remains"))
    return newest.path


def format_report(report: CheckpointReport) -> list:
    """Lines for ``nemo-vwn checkpoint verify``: the tracker, then one line per iteration."""
    lines = [f"{report.path}"]
    if report.tracker_iteration is not None or report.tracker_problems:
        named = report.tracker_iteration
        lines.append(f"  tracker: iteration {named}" if named is not None else "  tracker: none")
        lines += [f"    ! {p}" for p in report.tracker_problems]
    if not report.iterations:
        lines.append("  no iter_* directories")
    for status in report.iterations:
        how = ("sizes+CRC-32" if status.checksummed else
               "sizes" if status.has_manifest else "no manifest, structure only")
        lines.append(f"  iter {status.iteration:>7}  {status.state:<10}  "
                     f"{status.total_bytes / 1e6:9.2f} MB  ({how})")
        lines += [f"    ! {p}" for p in status.problems]
    if report.tracker_iteration is not None and report.status(report.tracker_iteration) is None:
        lines.append(f"  ! the tracker names iteration {report.tracker_iteration}, which has "
                     "no directory")
    return lines


# --------------------------------------------------------------------------- CLI
def add_checkpoint_parser(subparsers) -> argparse.ArgumentParser:
    """``nemo-vwn checkpoint verify DIR``: adds the verb; ``args.handler(args)`` runs it."""
    parser = subparsers.add_parser("checkpoint", help="inspect checkpoints (verify integrity)")
    verbs = parser.add_subparsers(dest="checkpoint_command", required=True)
    verify = verbs.add_parser("verify", help="print each iteration's status (exit 1 if any "
                                             "is damaged or incomplete)")
    verify.add_argument("directory", help="a checkpoint.save directory or one iter_* directory")
    how = verify.add_mutually_exclusive_group()
    how.add_argument("--checksums", dest="checksums", action="store_true", default=None,
                     help="verify CRC-32s whatever the size")
    how.add_argument("--sizes-only", dest="checksums", action="store_false",
                     help="skip the CRC-32s")
    parser.set_defaults(handler=run_checkpoint_command)
    return parser


def run_checkpoint_command(args) -> int:
    report = verify_checkpoint_dir(args.directory, args.checksums)
    print("\n".join(format_report(report)))
    bad = [s for s in report.iterations if not s.intact]
    missing = (report.tracker_iteration is not None
               and report.status(report.tracker_iteration) is None)
    return 1 if bad or missing or report.tracker_problems else 0
