package sandbox

import (
	"context"
	"fmt"

	"github.com/cellhq/cell/internal/build"
	"github.com/cellhq/cell/internal/ids"
	"github.com/cellhq/cell/pkg/envd"
)

// BuildMachines runs template builds on the sandbox runtime: build VMs are sandboxes of no team,
// restored from the base template or a layer, and layers are snapshots (see
// Runtime.SaveLayer) that the runtime restores like any other.
type BuildMachines struct {
	Runtime *Runtime
	Home    string
}

var _ build.Machines = BuildMachines{}

func (m BuildMachines) Start(ctx context.Context, from string, cpus, memoryMiB int) (build.VM, error) {
	// A build reaches the internet (package registries); never the host's private networks.
	sb, err := m.Runtime.Boot(ctx, Options{Template: from, CPUs: cpus, MemoryMiB: memoryMiB, Init: &envd.InitRequest{}})
	if err != nil {
		return nil, err
	}
	return sb, nil
}

func (m BuildMachines) Save(ctx context.Context, vm build.VM, name, team string, meta []byte) (string, error) {
	sb, ok := vm.(*Sandbox)
	if !ok {
		return "", fmt.Errorf("saving layer %s: not a sandbox of this runtime", name)
	}
	if m.Runtime.Template(name) != nil {
		// A forced step remade a cached layer: the new one gets a name of its own.
		name = name + "-" + ids.New(8)
	}
	t, err := m.Runtime.SaveLayer(ctx, sb, m.Home, name, team, meta)
	if err != nil {
		return "", err
	}
	m.Runtime.SetTemplate(name, t)
	return name, nil
}

func (m BuildMachines) Layer(name string) ([]byte, bool) {
	t := m.Runtime.Template(name)
	if t == nil || t.Layer == nil {
		return nil, false
	}
	return t.Layer, true
}
