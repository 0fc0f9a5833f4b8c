package vmm

import (
	"context"
	"time"
)

// LeaveGuest closes the host's end of the channel and waits, at most d, until envd has let go of
// the session: it then prints channel.IdleMarker on the console. A snapshot taken after that
// restores with envd waiting for a new host; taken before, the restored envd first tears down
// the old host's session on its cold translation cache (under TCG a create's handshake took ~10
// ms longer). It reports whether envd was seen to let go (an older envd prints no
// marker; a guest may print one early: either way a restore is only slower).
func (vm *VM) LeaveGuest(ctx context.Context, d time.Duration) bool {
	var seen uint64
	var more <-chan struct{}
	if vm.console != nil {
		seen, more = vm.console.idle.count()
	}
	vm.SuspendChannel()
	if more == nil {
		return false
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		select {
		case <-more:
			var n uint64
			if n, more = vm.console.idle.count(); n > seen {
				return true
			}
		case <-timer.C:
			vm.log.Debug("envd did not say it let go of the session: snapshotting it inside it")
			return false
		case <-ctx.Done():
			return false
		case <-vm.exited:
			return false
		}
	}
}
