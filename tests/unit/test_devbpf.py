"""The cgroup v2 device program (hostos/devbpf.py): its bytecode, run on every kind of
rule by a small interpreter of the instructions it uses (the kernel runs the same
bytes: tests/integration/test_qemu_confinement.py)."""

from __future__ import annotations

import struct

import pytest

from xenia.hostos import devbpf
from xenia.hostos.devbpf import ACC_MKNOD, ACC_READ, ACC_WRITE, DEV_BLOCK, DEV_CHAR, Rule

RW = ACC_READ | ACC_WRITE


def run(prog: bytes, dev_type: int, access: int, major: int, minor: int) -> int:
    """Interpret `prog` on struct bpf_cgroup_dev_ctx; R0 at exit."""
    ctx = struct.pack("<III", (access << 16) | dev_type, major, minor)
    regs = [0] * 11
    insns = [struct.unpack_from("<BBhi", prog, i) for i in range(0, len(prog), 8)]
    pc, steps = 0, 0
    while True:
        steps += 1
        assert steps < 10_000 and 0 <= pc < len(insns), "ran off the program"
        code, r, off, imm = insns[pc]
        dst, src = r & 0xF, r >> 4
        pc += 1
        if code == devbpf.LDX_MEM_W:
            assert src == 1 and off in (0, 4, 8)  # the only ctx reads the verifier allows
            regs[dst] = struct.unpack_from("<I", ctx, off)[0]
        elif code == devbpf.AND64_K:
            regs[dst] &= imm
        elif code == devbpf.RSH64_K:
            regs[dst] >>= imm
        elif code == devbpf.MOV64_K:
            regs[dst] = imm
        elif code == devbpf.MOV64_X:
            regs[dst] = regs[src]
        elif code == devbpf.JNE_K:
            pc += off if regs[dst] != imm else 0
        elif code == devbpf.JNE_X:
            pc += off if regs[dst] != regs[src] else 0
        elif code == devbpf.EXIT:
            return regs[0]
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")


def test_no_rules_denies_everything() -> None:
    prog = devbpf.assemble([])
    assert run(prog, DEV_CHAR, RW, 1, 3) == 0
    assert run(prog, DEV_BLOCK, ACC_READ, 8, 0) == 0
    assert prog[-16:] == devbpf.insn(devbpf.MOV64_K, 0, imm=0) + devbpf.insn(devbpf.EXIT)


def test_char_rule_allows_that_node_only() -> None:
    prog = devbpf.assemble([Rule("c", 1, 3)])  # /dev/null
    assert run(prog, DEV_CHAR, RW, 1, 3) == 1
    assert run(prog, DEV_CHAR, ACC_MKNOD, 1, 3) == 1
    assert run(prog, DEV_CHAR, RW, 1, 1) == 0  # /dev/mem
    assert run(prog, DEV_CHAR, RW, 2, 3) == 0
    assert run(prog, DEV_BLOCK, RW, 1, 3) == 0  # same numbers, a block device


def test_block_rule() -> None:
    prog = devbpf.assemble([Rule("b", 8, 16)])
    assert run(prog, DEV_BLOCK, RW, 8, 16) == 1
    assert run(prog, DEV_BLOCK, RW, 8, 0) == 0  # the host's sda
    assert run(prog, DEV_CHAR, RW, 8, 16) == 0


def test_access_subset() -> None:
    prog = devbpf.assemble([Rule("c", 10, 200, "rw")])
    assert run(prog, DEV_CHAR, ACC_READ, 10, 200) == 1
    assert run(prog, DEV_CHAR, RW, 10, 200) == 1
    assert run(prog, DEV_CHAR, ACC_MKNOD, 10, 200) == 0
    assert run(prog, DEV_CHAR, RW | ACC_MKNOD, 10, 200) == 0
    ro = devbpf.assemble([Rule("b", 7, 0, "r")])
    assert run(ro, DEV_BLOCK, ACC_READ, 7, 0) == 1
    assert run(ro, DEV_BLOCK, ACC_WRITE, 7, 0) == 0


def test_wildcards() -> None:
    any_minor = devbpf.assemble([Rule("c", 136, None)])  # /dev/pts/*
    assert run(any_minor, DEV_CHAR, RW, 136, 0) == 1
    assert run(any_minor, DEV_CHAR, RW, 136, 77) == 1
    assert run(any_minor, DEV_CHAR, RW, 137, 0) == 0
    mknod_all = devbpf.assemble([Rule("a", None, None, "m")])
    assert run(mknod_all, DEV_BLOCK, ACC_MKNOD, 8, 0) == 1
    assert run(mknod_all, DEV_CHAR, ACC_MKNOD, 1, 1) == 1
    assert run(mknod_all, DEV_CHAR, ACC_READ, 1, 1) == 0


def test_several_rules_each_checked() -> None:
    rules = [Rule("c", 1, 3), Rule("c", 1, 5), Rule("c", 10, 200), Rule("b", 253, 4)]
    prog = devbpf.assemble(rules)
    for r in rules:
        kind = DEV_CHAR if r.kind == "c" else DEV_BLOCK
        assert run(prog, kind, RW, r.major or 0, r.minor or 0) == 1
    assert run(prog, DEV_CHAR, RW, 1, 1) == 0
    assert run(prog, DEV_BLOCK, RW, 253, 5) == 0
    assert run(prog, DEV_CHAR, RW, 253, 4) == 0


def test_encoding_and_bad_rules() -> None:
    # BPF_LDX|BPF_MEM|BPF_W r2 = *(u32 *)(r1 + 0): dst in the low nibble, src high
    assert devbpf.insn(devbpf.LDX_MEM_W, 2, 1, 0) == bytes([0x61, 0x12, 0, 0, 0, 0, 0, 0])
    assert devbpf.insn(devbpf.JNE_K, 4, off=3, imm=253) == bytes(
        [0x55, 0x04, 3, 0, 253, 0, 0, 0])
    assert str(Rule("c", 136, None, "rw")) == "c 136:* rw"
    for bad in (Rule("x", 1, 3), Rule("c", 1, 3, "rx"), Rule("c", 1, 3, "")):
        with pytest.raises(ValueError):
            devbpf.assemble([bad])


def test_rule_of_a_node_and_of_a_file() -> None:
    assert Rule.of_node("/dev/null") == Rule("c", 1, 3, "rwm")
    with pytest.raises(OSError):
        Rule.of_node(__file__)
