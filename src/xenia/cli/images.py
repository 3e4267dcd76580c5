"""`xenia image build|list`."""

from __future__ import annotations

import click

from xenia.cli.base import Ctx, cli, out, pass_ctx

# images/builds.py's TARGETS, spelled here so that the CLI's start-up does not import the
# image builders (~30 ms); tests/unit/test_image_builds.py keeps the two equal.
TARGETS = ("tiny", "rootfs", "driver", "hvm-disk", "uefi-disk", "hvm-iso")


# -- images ------------------------------------------------------------------------------
@cli.group()
def image() -> None:
    """Guest images (xenia image build tiny)."""


@image.command("build")
@click.argument("name", type=click.Choice(TARGETS), required=False)
@click.option("--force", is_flag=True, help="Rebuild even when cached.")
@click.option("--driver-domain", is_flag=True,
              help="Build the driver-domain image (same as NAME `driver`).")
@pass_ctx
def image_build(c: Ctx, name: str | None, force: bool, driver_domain: bool) -> None:
    """Build a guest image into the state dir.

    tiny: kernel + initramfs for direct kernel boot. hvm-disk (BIOS, MBR + SYSLINUX),
    uefi-disk (UEFI, GPT + EFI System Partition) and hvm-iso (BIOS and UEFI): the tiny
    kernel booted through firmware; building one builds all three. driver: tiny plus an
    NBD server (qemu-nbd), for driver domains (`driver_domain = 1`). rootfs: a root
    filesystem for container domains.
    """
    if driver_domain and name not in (None, "driver"):
        raise click.UsageError("--driver-domain builds the image `driver`; give no other NAME")
    name = "driver" if driver_domain else name or "tiny"
    c.paths.ensure()
    from xenia.images.builds import build_image

    made = build_image(c.paths.images, name, force,
                       progress=lambda s: click.echo(f"  {s}", err=True))
    for kind, path in made.items():
        out(f"{kind}: {path}")


@image.command("list")
@pass_ctx
def image_list(c: Ctx) -> None:
    """List built guest images."""
    from xenia.images.tiny import list_images

    out(f"{'Name':<10} {'Kernel version':<26} {'Size':>9}  Path")
    for img in list_images(c.paths.images):
        out(f"{img.name:<10} {img.kernel_version:<26} {img.size // 1024:>7}Ki  {img.kernel.parent}")


