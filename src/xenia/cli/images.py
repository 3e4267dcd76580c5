"""`xenia image build|list`."""

from __future__ import annotations

import click

from xenia.cli.base import Ctx, cli, out, pass_ctx


# -- images ------------------------------------------------------------------------------
@cli.group()
def image() -> None:
    """Guest images (xenia image build tiny)."""


@image.command("build")
@click.argument("name", type=click.Choice(["tiny"]))
@click.option("--force", is_flag=True, help="Rebuild even when cached.")
@pass_ctx
def image_build(c: Ctx, name: str, force: bool) -> None:
    """Build a guest image into the state dir."""
    from xenia.images.tiny import build_tiny

    c.paths.ensure()
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


