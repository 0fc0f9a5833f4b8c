package manager

import "testing"

// A QEMU belongs to a run directory only if an argument names its own VM directory there as a
// whole path: /srv/home/a/run/ is another directory than /home/a/run/.
func TestNamesDir(t *testing.T) {
	const dir = "/home/a/run/abc123/"
	for _, c := range []struct {
		args []string
		want bool
	}{
		{[]string{"qemu", "-qmp", "unix:/home/a/run/abc123/qmp.sock,server=on"}, true},
		{[]string{"qemu", "-chardev", "socket,id=c,path=/home/a/run/abc123/ch.sock"}, true},
		{[]string{"qemu", "-drive", "file=/home/a/run/abc123/disk.qcow2,if=none"}, true},
		{[]string{"/home/a/run/abc123/x"}, true},
		{[]string{"qemu", "-qmp", "unix:/srv/home/a/run/abc123/qmp.sock"}, false},
		{[]string{"qemu", "-drive", "file=/x/home/a/run/abc123/disk.qcow2,file=/srv/home/a/run/abc123/y"}, false},
		{[]string{"qemu", "-drive", "file=/srv/home/a/run/abc123/d,path=/home/a/run/abc123/e"}, true},
		{[]string{"qemu", "-qmp", "unix:/home/a/run/abc1234/qmp.sock"}, false},
	} {
		if got := namesDir(c.args, dir); got != c.want {
			t.Errorf("%q: %v, want %v", c.args, got, c.want)
		}
	}
}
