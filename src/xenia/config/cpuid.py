"""xl's `cpuid` key: CPUID bits a guest sees set or cleared, as QEMU -cpu flags.

Two forms, as xl.cfg(5) gives them:

* libxl's string: "host,aes=1,sse4a=0" (the leading "host" is optional); a value is 1 (set),
  0 (clear), or x/k/s (as the CPU model has it: KVM/QEMU keep no per-bit host policy);
* xend's list: ["0x1:ecx=xxxxxxxxxxxxxxxxxxxxxxxxxx0xxxxx", ...], one 32-character string a
  register, bit 31 first, with 1/0 and x/k/s as above.

Each named bit maps to QEMU's name for it (`FLAGS`); a bit QEMU has no name for here is
refused with its name (or leaf, register and bit), never silently dropped.
"""

from __future__ import annotations

import re

from xenia.errors import InvalidConfig

# libxl's name -> (QEMU's feature name, leaf, register, bit). The libxl names of
# tools/libs/light/libxl_cpuid.c that QEMU's x86 CPU model can set or clear.
FLAGS: dict[str, tuple[str, int, str, int]] = {}


def _bits(leaf: int, reg: str, names: str) -> None:
    for item in names.split():
        bit, _, pair = item.partition(":")
        libxl, _, qemu = pair.partition("=")
        FLAGS[libxl] = (qemu or libxl, leaf, reg, int(bit))


_bits(0x1, "edx", "0:fpu 1:vme 2:de 3:pse 4:tsc 5:msr 6:pae 7:mce 8:cmpxchg8=cx8 9:apic "
      "11:sysenter=sep 12:mtrr 13:pge 14:mca 15:cmov 16:pat 17:pse36 19:clfsh=clflush "
      "21:ds 22:acpi 23:mmx 24:fxsr 25:sse 26:sse2 27:ss 28:htt=ht 29:tm 31:pbe")
_bits(0x1, "ecx", "0:sse3=pni 1:pclmulqdq 2:dtes64 3:monitor 4:dscpl=ds-cpl 5:vmx 6:smx "
      "7:est 8:tm2 9:ssse3 10:cntxid=cid 12:fma 13:cmpxchg16=cx16 14:xtpr 15:pdcm "
      "17:pcid 18:dca 19:sse4_1=sse4.1 20:sse4_2=sse4.2 21:x2apic 22:movbe 23:popcnt "
      "24:tsc-deadline=tsc-deadline 25:aes 26:xsave 28:avx 29:f16c 30:rdrand")
_bits(0x7, "ebx", "0:fsgsbase 1:tsc_adjust=tsc-adjust 3:bmi1 4:hle 5:avx2 7:smep 8:bmi2 "
      "9:erms 10:invpcid 11:rtm 16:avx512f 17:avx512dq 18:rdseed 19:adx 20:smap "
      "21:avx512-ifma=avx512ifma 23:clflushopt 24:clwb 26:avx512pf 27:avx512er "
      "28:avx512cd 29:sha=sha-ni 30:avx512bw 31:avx512vl")
_bits(0x7, "ecx", "1:avx512-vbmi=avx512vbmi 2:umip 3:pku 5:waitpkg 8:gfni 9:vaes "
      "10:vpclmulqdq 22:rdpid")
_bits(0x7, "edx", "4:fsrm 10:md-clear=md-clear 26:ibrsb=spec-ctrl 27:stibp "
      "29:arch-caps=arch-capabilities 31:ssbd")
_bits(0x80000001, "ecx", "0:lahfsahf=lahf-lm 1:cmplegacy=cmp-legacy 2:svm 3:extapic "
      "4:altmovcr8=cr8legacy 5:abm 6:sse4a 7:misalignsse 8:3dnowprefetch 9:osvw 10:ibs "
      "11:xop 12:skinit 13:wdt 15:lwp 16:fma4 17:tce 19:nodeid=nodeid-msr 21:tbm "
      "22:topoext 23:perfctr_core=perfctr-core 24:perfctr_nb=perfctr-nb")
_bits(0x80000001, "edx", "11:syscall 20:nx 22:mmxext 25:ffxsr=fxsr-opt 26:page1gb=pdpe1gb "
      "27:rdtscp 29:lm 30:3dnowext 31:3dnow")

_BY_BIT = {(leaf, reg, bit): name for name, (_, leaf, reg, bit) in FLAGS.items()}
_QEMU_NAMES = {qemu for qemu, *_ in FLAGS.values()}
# A leaf is 32 bits: at most 10 digits (int() raises past 4,300 decimal digits).
_XEND_RE = re.compile(r"(0x[0-9a-fA-F]{1,8}|\d{1,10})(?:,(0x[0-9a-fA-F]{1,8}|\d{1,10}))?:(.*)\Z")
_REGS = ("eax", "ebx", "ecx", "edx")


def _fail(spec: str, problem: str) -> InvalidConfig:
    return InvalidConfig(f"Failed to parse cpuid '{spec}': {problem}")


def _setting(spec: str, name: str, value: str) -> str | None:
    """QEMU's "flag=on|off" for one libxl-named bit, or None for "as the model has it"."""
    if name not in FLAGS:
        raise _fail(spec, f"unknown CPUID bit '{name}' (QEMU has no such feature bit; "
                          "known: " + ", ".join(sorted(FLAGS)[:12]) + ", ...)")
    if value in ("x", "k", "s"):
        return None
    if value not in ("0", "1"):
        raise _fail(spec, f"'{name}={value}': a value is 1, 0, x, k or s")
    return f"{FLAGS[name][0]}={'on' if value == '1' else 'off'}"


def _libxl(spec: str) -> list[str]:
    items = [p.strip() for p in spec.split(",") if p.strip()]
    if items and items[0] == "host":
        items = items[1:]
    out = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise _fail(spec, f"'{item}' is not NAME=VALUE")
        flag = _setting(spec, name.strip(), value.strip())
        if flag is not None:
            out.append(flag)
    return out


def _xend(spec: str) -> list[str]:
    m = _XEND_RE.match(spec.strip())
    if not m:
        raise _fail(spec, "expected LEAF[,SUBLEAF]:REG=32 bits (such as "
                          "0x1:ecx=xxxxxxxxxxxxxxxxxxxxxxxxxx1xxxxx)")
    leaf = int(m.group(1), 0)
    out = []
    for part in m.group(3).split(","):
        reg, sep, bits = part.strip().partition("=")
        if not sep or reg not in _REGS or len(bits) != 32 or set(bits) - set("01xks"):
            raise _fail(spec, f"'{part}': REG=BITS with REG one of eax, ebx, ecx, edx and 32 "
                              "characters of 1, 0, x, k, s (bit 31 first)")
        for i, char in enumerate(bits):
            if char not in "01":
                continue
            bit = 31 - i
            name = _BY_BIT.get((leaf, reg, bit))
            if name is None:
                raise _fail(spec, f"leaf {leaf:#x} {reg} bit {bit} is not a bit QEMU can set "
                                  "or clear")
            out.append(f"{FLAGS[name][0]}={'on' if char == '1' else 'off'}")
    return out


def parse_cpuid(value: str | list[str]) -> list[str]:
    """QEMU -cpu settings ("aes=on", "sse4a=off") from either form of `cpuid`."""
    specs = value if isinstance(value, list) else [value]
    # By name, the last one wins and moves to the end; a dict, not a filtered list per
    # flag: 256 KB of flags took 1.2 s that way.
    out: dict[str, str] = {}
    for spec in specs:
        flags = _xend(spec) if isinstance(value, list) else _libxl(spec)
        for flag in flags:
            name = flag.split("=")[0]
            out.pop(name, None)
            out[name] = flag
    return list(out.values())


def valid_flag(flag: str) -> bool:
    """True for a setting parse_cpuid can make (a config from the API is checked so)."""
    name, sep, value = flag.partition("=")
    return bool(sep) and name in _QEMU_NAMES and value in ("on", "off")
