package build

import (
	"strings"
	"testing"
)

func TestParseName(t *testing.T) {
	for in, want := range map[string]Name{
		"my-app":         {Alias: "my-app", Tag: "default"},
		"My-App:V1.2":    {Alias: "my-app", Tag: "v1.2"},
		"team/app:prod":  {Namespace: "team", Alias: "app", Tag: "prod"},
		"a_b":            {Alias: "a_b", Tag: "default"},
		"ns/a:default":   {Namespace: "ns", Alias: "a", Tag: "default"},
		"x:1.0.0-rc_1":   {Alias: "x", Tag: "1.0.0-rc_1"},
		"0numeric:first": {Alias: "0numeric", Tag: "first"},
	} {
		got, err := ParseName(in)
		if err != nil || got != want {
			t.Errorf("ParseName(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "a b", "a:", ":tag", "a/b/c", "a:b:c", "a/", "/a", "a.b", "a:t!g", strings.Repeat("a", 129), "é"} {
		if n, err := ParseName(in); err == nil {
			t.Errorf("ParseName(%q) = %+v, want an error", in, n)
		}
	}
	if n, _ := ParseName("ns/app:v1"); n.String() != "ns/app:v1" || n.Base() != "ns/app" {
		t.Errorf("String/Base: %q %q", n.String(), n.Base())
	}
}

func TestSpecValidate(t *testing.T) {
	hash := strings.Repeat("ab", 32)
	ok := Spec{Steps: []Step{
		{Type: StepRun, Args: []string{"echo hi"}},
		{Type: StepRun, Args: []string{"apt-get install -y x", "root"}},
		{Type: StepCopy, Args: []string{"app", "/app", "", ""}, FilesHash: hash},
		{Type: StepCopy, Args: []string{"app", "/app", "user", "0755"}, FilesHash: hash},
		{Type: StepEnv, Args: []string{"A", "1", "B_2", "$A"}},
		{Type: StepWorkdir, Args: []string{"/app"}},
		{Type: StepUser, Args: []string{"svc-user"}},
	}}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		step Step
		want string
	}{
		{Step{Type: "FROB"}, "type"},
		{Step{Type: StepRun}, "args"},
		{Step{Type: StepRun, Args: []string{"a", "b", "c"}}, "args"},
		{Step{Type: StepCopy, Args: []string{"a", "/a"}}, "filesHash"},
		{Step{Type: StepCopy, Args: []string{"a", "/a"}, FilesHash: strings.ToUpper(hash)}, "filesHash"},
		{Step{Type: StepCopy, Args: []string{"a", "/a", "", "0999"}, FilesHash: hash}, "mode"},
		{Step{Type: StepCopy, Args: []string{"a", "/a", "", "17777"}, FilesHash: hash}, "mode"},
		{Step{Type: StepEnv, Args: []string{"A"}}, "pairs"},
		{Step{Type: StepEnv, Args: []string{"1A", "x"}}, "environment variable"},
		{Step{Type: StepEnv, Args: []string{"A=B", "x"}}, "environment variable"},
		{Step{Type: StepWorkdir, Args: []string{""}}, "path"},
		{Step{Type: StepUser, Args: []string{"Root"}}, "user name"},
		{Step{Type: StepUser, Args: []string{"a;rm"}}, "user name"},
		{Step{Type: StepRun, Args: []string{"a\x00b"}}, "NUL"},
	} {
		err := Spec{Steps: []Step{{Type: StepRun, Args: []string{"ok"}}, c.step}}.Validate()
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "steps[1]") {
			t.Errorf("%+v: %v, want an error naming steps[1] and %q", c.step, err, c.want)
		}
	}
}

func TestLayerKeys(t *testing.T) {
	base := BaseKey("team-a", "/templates/base/fp1", 2, 512)
	if base == BaseKey("team-b", "/templates/base/fp1", 2, 512) || base == BaseKey("team-a", "/templates/base/fp2", 2, 512) ||
		base == BaseKey("team-a", "/templates/base/fp1", 2, 1024) {
		t.Fatal("the base key ignores its team, snapshot or size")
	}
	run := Step{Type: StepRun, Args: []string{"echo a"}}
	k1 := LayerKey(base, run)
	if k1 != LayerKey(base, run) {
		t.Fatal("not deterministic")
	}
	seen := map[string]string{k1: "run"}
	for name, st := range map[string]Step{
		"other args":       {Type: StepRun, Args: []string{"echo b"}},
		"split args":       {Type: StepRun, Args: []string{"echo", "a"}},
		"another user":     {Type: StepRun, Args: []string{"echo a", "root"}},
		"another type":     {Type: StepWorkdir, Args: []string{"echo a"}},
		"files":            {Type: StepRun, Args: []string{"echo a"}, FilesHash: "x"},
		"args into hash":   {Type: StepRun, Args: []string{"echo a", ""}},
		"boundary shifted": {Type: StepRun, Args: []string{"echo a1:x"}},
	} {
		k := LayerKey(base, st)
		if prev, dup := seen[k]; dup {
			t.Errorf("%s has the key of %s", name, prev)
		}
		seen[k] = name
	}
	if LayerKey(k1, run) == k1 || LayerKey(LayerKey(base, Step{Type: StepRun, Args: []string{"x"}}), run) == LayerKey(k1, run) {
		t.Error("a key does not depend on its parent")
	}
	if forced := (Step{Type: StepRun, Args: []string{"echo a"}, Force: true}); LayerKey(base, forced) != k1 {
		t.Error("force changes the key (it should only skip the cache)")
	}
	if n := LayerName(k1); !IsLayer(n) || len(n) > 64 {
		t.Errorf("LayerName %q", n)
	}
}

func TestGuestQuote(t *testing.T) {
	for in, want := range map[string]string{
		`plain`:          `plain`,
		`$PATH:/x`:       `$PATH:/x`,
		`${HOME}/bin`:    `${HOME}/bin`,
		`a "quoted" \ b`: `a \"quoted\" \\ b`,
		"$(rm -rf /)":    `\$(rm -rf /)`,
		"`id`":           "\\`id\\`",
		`cost $5 $`:      `cost $5 \$`,
		`$$`:             `\$\$`,
		`lit \$x \\ \n`:  `lit \$x \\ \\n`,
	} {
		if got := guestQuote(in); got != want {
			t.Errorf("guestQuote(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestLogWriterKeepsTheTail(t *testing.T) {
	var got []string
	w := &logWriter{log: func(s string) { got = append(got, s) }}
	for i := range 30 {
		_, _ = w.Write([]byte(strings.Repeat("x", i) + "\r\n"))
	}
	_, _ = w.Write([]byte("no newline \xff"))
	tail := w.flush()
	if len(got) != 31 || got[30] != "no newline \uFFFD" || got[3] != "xxx" {
		t.Fatalf("lines %d: %q", len(got), got[len(got)-1])
	}
	if n := strings.Count(tail, "\n") + 1; n != tailKeep {
		t.Fatalf("tail has %d lines, want %d", n, tailKeep)
	}
	long := &logWriter{log: func(s string) { got = append(got, s) }}
	_, _ = long.Write([]byte(strings.Repeat("y", 3*maxLogLine)))
	long.flush()
	for _, l := range got[31:] {
		if len(l) > maxLogLine {
			t.Fatalf("a log line of %d bytes", len(l))
		}
	}
}

func TestPackagesSpec(t *testing.T) {
	a, err := PackagesSpec([]string{"cowsay", "curl", "cowsay"}, []string{"requests>=2", "numpy"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := PackagesSpec([]string{"curl", "cowsay"}, []string{"numpy", "requests>=2"}, nil)
	if len(a.Steps) != 2 || LayerKey("", a.Steps[0]) != LayerKey("", b.Steps[0]) || LayerKey("", a.Steps[1]) != LayerKey("", b.Steps[1]) {
		t.Fatalf("the order of the packages changes the layers: %+v", a.Steps)
	}
	if !strings.Contains(a.Steps[0].Args[0], "'cowsay' 'curl' 'python3-pip'") || a.Steps[0].Args[1] != "root" ||
		a.Steps[1].Args[0] != "pip install --break-system-packages 'numpy' 'requests>=2'" {
		t.Fatalf("%+v", a.Steps)
	}
	if err := a.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"", "-o", "a b", "x;rm", "x'y", "$(id)", "a`b`"} {
		if _, err := PackagesSpec([]string{bad}, nil, nil); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	// npm is in the base image: npm packages need no apt step.
	if s, _ := PackagesSpec(nil, nil, []string{"@scope/pkg@1.2.3"}); len(s.Steps) != 1 || s.Steps[0].Args[0] != "npm install -g '@scope/pkg@1.2.3'" {
		t.Fatalf("npm: %+v", s.Steps)
	}
}
