package build

import (
	"fmt"
	"slices"
	"strings"
)

// maxPackages bounds one list of packages.
const maxPackages = 200

// PackagesSpec is a build that installs packages on the base image, as `cell run --apt --pip
// --npm` asks: apt first (with pip itself when pip packages are asked for; npm is in the base
// image), then pip, then npm, each list sorted so that the same packages in any order are the
// same layers.
func PackagesSpec(apt, pip, npm []string) (Spec, error) {
	lists := map[string][]string{"apt": apt, "pip": pip, "npm": npm}
	for kind, l := range lists {
		if len(l) > maxPackages {
			return Spec{}, fmt.Errorf("--%s: at most %d packages", kind, maxPackages)
		}
		for _, p := range l {
			if !validPackage(p) {
				return Spec{}, fmt.Errorf("--%s %q: not a package name (letters, digits and + . _ - : = @ / ~ < > ! , only)", kind, p)
			}
		}
	}
	apt = slices.Clone(apt)
	if len(pip) > 0 {
		apt = append(apt, "python3-pip")
	}
	var spec Spec
	if l := sortedSet(apt); len(l) > 0 {
		spec.Steps = append(spec.Steps, Step{Type: StepRun, Args: []string{
			"apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends " + quoteAll(l), "root"}})
	}
	if l := sortedSet(pip); len(l) > 0 {
		// Debian's Python is the system's (PEP 668): the sandbox is this one program's.
		spec.Steps = append(spec.Steps, Step{Type: StepRun, Args: []string{"pip install --break-system-packages " + quoteAll(l), "root"}})
	}
	if l := sortedSet(npm); len(l) > 0 {
		spec.Steps = append(spec.Steps, Step{Type: StepRun, Args: []string{"npm install -g " + quoteAll(l), "root"}})
	}
	return spec, nil
}

func sortedSet(l []string) []string {
	l = slices.Clone(l)
	slices.Sort(l)
	return slices.Compact(l)
}

// quoteAll joins package names, each single-quoted (validPackage let no quote through).
func quoteAll(l []string) string {
	q := make([]string, len(l))
	for i, p := range l {
		q[i] = "'" + p + "'"
	}
	return strings.Join(q, " ")
}

func validPackage(p string) bool {
	if p == "" || len(p) > 214 || p[0] == '-' {
		return false
	}
	for _, c := range p {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.ContainsRune("+._-:=@/~<>!,", c):
		default:
			return false
		}
	}
	return true
}
