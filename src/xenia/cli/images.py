"""`xenia image build|list`."""

from __future__ import annotations

import click

from xenia.cli.base import Ctx, cli, out, pass_ctx


# -- images ------------------------------------------------------------------------------
@cli.group()
def image() -> None:
    """Guest images (xenia image build tiny)."""


# HVM images (firmware boot of the tiny kernel): CLI name -> build_hvm_images() key.
HVM_IMAGES = {"hvm-disk": "bios-disk", "uefi-disk": "uefi-disk", "hvm-iso": "iso"}


@image.command("build")
@click.argument("name", type=click.Choice(["tiny", "rootfs", "driver", *HVM_IMAGES]),
                required=False)
@click.option("--force", is_flag=True, help="Rebuild even when cached.")
@click.option("--driver-domain", is_flag=True,
              help="Build the driver-domain image (same as NAME `driver`).")
@pass_ctx
def image_build(c: Ctx, name: str | None, force: bool, driver_domain: bool) -> None:
    """Build a guest image into the state dir.

    tiny: kernel + initramfs for direct kernel boot. hvm-disk (BIOS, MBR + SYSLINUX),
    uefi-disk (UEFI, GPT + EFI System Partition) and hvm-iso (BIOS and UEFI): the tiny
    kernel booted through firmware; building one builds all three. driver: tiny plus an
    NBD server (qemu-nbd), for driver domains (`driver_domain = 1`).
    """
    if driver_domain and name not in (None, "driver"):
        raise click.UsageError("--driver-domain builds the image `driver`; give no other NAME")
    name = "driver" if driver_domain else name or "tiny"
    c.paths.ensure()
    if name == "driver":
        from xenia.images.driver import build_driver

        img = build_driver(c.paths.images, force=force,
                           progress=lambda s: click.echo(f"  {s}", err=True))
        out(f"kernel: {img.kernel}")
        out(f"ramdisk: {img.initrd}")
        return
    if name == "rootfs":  # a root filesystem for container domains (images/rootfs.py)
        from xenia.images.rootfs import build_rootfs

        tree = build_rootfs(c.paths.images, force=force,
                            progress=lambda s: click.echo(f"  {s}", err=True))
        out(f"rootfs: {tree.path}")
        return
    if name in HVM_IMAGES:
        from xenia.images.hvm import build_hvm_images

        paths = build_hvm_images(c.paths.images, force=force,
                                 progress=lambda s: click.echo(f"  {s}", err=True))
        out(f"{'cdrom' if name == 'hvm-iso' else 'disk'}: {paths[HVM_IMAGES[name]]}")
        return
    from xenia.images.tiny import build_tiny

    img = build_tiny(c.paths.images, force=force,
                     progress=lambda s: click.echo(f"  {s}", err=True))
    out(f"kernel: {img.kernel}")
    out(f"ramdisk: {img.initrd}")


@image.command("list")
@pass_ctx
def image_list(c: Ctx) -> None:
    """List built guest images."""
    from xenia.images.tiny import list_images

    out(f"{'Name':<10} {'Kernel version':<26} {'Size':>9}  Path")
    for img in list_images(c.paths.images):
        out(f"{img.name:<10} {img.kernel_version:<26} {img.size // 1024:>7}Ki  {img.kernel.parent}")


