# Devices of Cell's QEMU: the microvm machine and the virtio-mmio devices Cell attaches.
CONFIG_MICROVM=y
CONFIG_VIRTIO_MMIO=y
CONFIG_VIRTIO_SERIAL=y
CONFIG_VIRTIO_BLK=y
CONFIG_VIRTIO_NET=y
CONFIG_VIRTIO_RNG=y
# Free page reporting: the guest hands back the pages it frees (see discard-private.patch).
CONFIG_VIRTIO_BALLOON=y
