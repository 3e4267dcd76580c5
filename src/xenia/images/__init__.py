"""Guest image builders. `tiny` (kernel + busybox initramfs) is the test and demo guest."""

from xenia.images.tiny import ImageInfo, build_tiny, find_image, list_images

__all__ = ["ImageInfo", "build_tiny", "find_image", "list_images"]
