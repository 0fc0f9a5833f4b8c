package vmm

import (
	"strings"
	"testing"
)

// TestArgsDiscard: the guest mounts its root with online discard, and the disk passes discards
// on (in whole qcow2 clusters) and stores zeroes as zero clusters (the VM test
// TestDiskDiscardReturnsSpace checks what this does to the overlay).
func TestArgsDiscard(t *testing.T) {
	for _, accel := range []Accel{AccelTCG, AccelKVM} {
		m := testMachine()
		m.Accel = accel
		args, err := m.Args()
		if err != nil {
			t.Fatal(err)
		}
		if app := argAfter(args, "-append")[0]; !strings.Contains(app, " rootflags=discard ") {
			t.Errorf("%s: the root is not mounted with discard: %s", accel, app)
		}
		drive := argAfter(args, "-drive")
		if len(drive) != 1 || !strings.Contains(drive[0], ",discard=unmap") || !strings.Contains(drive[0], ",detect-zeroes=unmap") {
			t.Errorf("%s: -drive %v", accel, drive)
		}
		var blk string
		for _, d := range argAfter(args, "-device") {
			if strings.HasPrefix(d, "virtio-blk-device,") {
				blk = d
			}
		}
		if !strings.Contains(blk, ",discard_granularity=65536") {
			t.Errorf("%s: -device %s", accel, blk)
		}
	}
}
