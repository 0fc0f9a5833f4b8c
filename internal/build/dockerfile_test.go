package build

import (
	"reflect"
	"strings"
	"testing"
)

func runStep(cmd string) Step { return Step{Type: StepRun, Args: []string{cmd}} }
func cp(src, dest, user, mode string) Step {
	return Step{Type: StepCopy, Args: []string{src, dest, user, mode}}
}
func env(kv ...string) Step { return Step{Type: StepEnv, Args: kv} }
func workdir(p string) Step { return Step{Type: StepWorkdir, Args: []string{p}} }
func user(u string) Step    { return Step{Type: StepUser, Args: []string{u}} }

// steps are s after the two every translation starts with, as E2B's fromDockerfile does.
func steps(s ...Step) []Step { return append([]Step{user("root"), workdir("/")}, s...) }

// fullSteps are s between those two and the two a file setting no USER or WORKDIR ends with.
func fullSteps(s ...Step) []Step { return steps(append(s, user("user"), workdir("/home/user"))...) }

func TestParseDockerfile(t *testing.T) {
	tests := []struct {
		name     string
		src      string
		args     map[string]string
		from     string
		steps    []Step
		start    string
		warnings []string // substrings, one per warning, in order
	}{
		{name: "base image", src: "FROM e2bdev/base\n", steps: fullSteps()},
		{name: "base names", src: "FROM cell/base:latest AS b\n", steps: fullSteps()},
		{name: "base alone", src: "from base", steps: fullSteps()},
		{name: "image", src: "FROM python:3.12 AS build\n", from: "python:3.12", steps: fullSteps()},
		{name: "run shell", src: "FROM base\nRUN apt-get update && apt-get install -y cowsay\n",
			steps: fullSteps(runStep("apt-get update && apt-get install -y cowsay"))},
		{name: "run exec", src: `FROM base
RUN ["echo", "a b", "it's", "$HOME"]`,
			steps: fullSteps(runStep(`echo 'a b' 'it'\''s' '$HOME'`))},
		{name: "lower-case and comments", src: "# a comment\n\nfrom base\n  # indented comment\nrun true\n",
			steps: fullSteps(runStep("true"))},
		{name: "continuation", src: "FROM base\nRUN apt-get update \\\n    # inside\n\n    && apt-get install -y \\\n    curl\n",
			steps: fullSteps(runStep("apt-get update     && apt-get install -y     curl"))},
		{name: "escape directive", src: "# escape=`\nFROM base\nRUN echo a `\n  b\nCOPY c:\\src\\ d/\n",
			steps: fullSteps(runStep("echo a   b"), cp("c:\\src\\", "d/", "", ""))},
		{name: "crlf", src: "FROM base\r\nRUN a \\\r\n b\r\n", steps: fullSteps(runStep("a  b"))},
		{name: "copy", src: "FROM base\nCOPY app/ /app\n", steps: fullSteps(cp("app/", "/app", "", ""))},
		{name: "copy flags", src: "FROM base\nCOPY --chown=user:users --chmod=755 run.sh /usr/local/bin/\n",
			steps: fullSteps(cp("run.sh", "/usr/local/bin/", "user", "0755"))},
		{name: "copy flags and tabs", src: "FROM base\nCOPY\t--chmod=0644\t--chown=app\ta\tb\n", steps: fullSteps(cp("a", "b", "app", "0644"))},
		{name: "copy numeric chown", src: "FROM base\nCOPY --chown=1000 a b\n", steps: fullSteps(cp("a", "b", "1000", ""))},
		{name: "copy several", src: "FROM base\nCOPY a b/c /dst/\n",
			steps: fullSteps(cp("a", "/dst/", "", ""), cp("b/c", "/dst/", "", ""))},
		{name: "copy json", src: "FROM base\nCOPY [\"a b\", \"/x y/\"]\n", steps: fullSteps(cp("a b", "/x y/", "", ""))},
		{name: "copy absolute and dot", src: "FROM base\nCOPY /etc/x ./ /d/\n",
			steps: fullSteps(cp("etc/x", "/d/", "", ""), cp(".", "/d/", "", ""))},
		{name: "add local archive", src: "FROM base\nADD app.tar.gz /opt/\n",
			steps: fullSteps(cp("app.tar.gz", "/opt/", "", "")), warnings: []string{"line 2: ADD app.tar.gz"}},
		{name: "copy link flag", src: "FROM base\nCOPY --link a /a\n",
			steps: fullSteps(cp("a", "/a", "", "")), warnings: []string{"line 2: COPY --link"}},
		{name: "env forms", src: "FROM base\nENV A=1 B=\"v 2\" C='$x' D=\\$y\nENV LEGACY some value  here\n",
			// Quoted and escaped dollars stay literal in the guest's expansion: \$ in an ENV step.
			steps: fullSteps(env("A", "1", "B", "v 2", "C", `\$x`, "D", `\$y`), env("LEGACY", "some value  here"))},
		{name: "env keeps guest references", src: "FROM base\nENV PATH=/opt/bin:$PATH HOME2=${HOME}/x\n",
			steps: fullSteps(env("PATH", "/opt/bin:$PATH", "HOME2", "${HOME}/x"))},
		{name: "workdir and user", src: "FROM base\nWORKDIR /app\nUSER app:staff\nRUN make\n",
			steps: steps(workdir("/app"), user("app"), runStep("make"))},
		{name: "only user set", src: "FROM base\nUSER root\n",
			steps: steps(user("root"), workdir("/home/user"))},
		{name: "only workdir set", src: "FROM base\nWORKDIR /srv\n",
			steps: steps(workdir("/srv"), user("user"))},
		{name: "cmd shell", src: "FROM base\nCMD python3 -m http.server 8000\n", steps: fullSteps(),
			start: "python3 -m http.server 8000"},
		{name: "exec form quoting", src: "FROM base\nCMD [\"A=1\", \"\", \"a;b\", \"~\"]\n", steps: fullSteps(),
			start: "'A=1' '' 'a;b' '~'"},
		{name: "cmd exec", src: "FROM base\nCMD [\"python3\", \"-m\", \"http.server\"]\n", steps: fullSteps(),
			start: "python3 -m http.server"},
		{name: "entrypoint exec with cmd exec", src: "FROM base\nCMD [\"--port\", \"80\"]\nENTRYPOINT [\"/srv/run\"]\n",
			steps: fullSteps(), start: "/srv/run --port 80"},
		{name: "entrypoint exec with cmd shell", src: "FROM base\nENTRYPOINT [\"tini\", \"--\"]\nCMD echo $HOME\n",
			steps: fullSteps(), start: "tini -- /bin/sh -c 'echo $HOME'"},
		{name: "entrypoint shell ignores cmd", src: "FROM base\nCMD [\"x\"]\nENTRYPOINT exec srv\n",
			steps: fullSteps(), start: "exec srv", warnings: []string{"line 2: CMD is ignored"}},
		{name: "last cmd wins", src: "FROM base\nCMD a\nCMD b\n", steps: fullSteps(), start: "b"},
		{name: "ignored instructions", src: "FROM base\nEXPOSE 80\nLABEL a=b\nHEALTHCHECK CMD true\nSTOPSIGNAL TERM\n" +
			"VOLUME /data\nSHELL [\"/bin/bash\", \"-c\"]\nONBUILD RUN x\nMAINTAINER me\n",
			steps: fullSteps(), warnings: []string{"line 2: EXPOSE", "line 3: LABEL", "line 4: HEALTHCHECK",
				"line 5: STOPSIGNAL", "line 6: VOLUME", "line 7: SHELL", "line 8: ONBUILD", "line 9: MAINTAINER"}},
		{name: "from platform", src: "FROM --platform=linux/amd64 ubuntu:24.04\n", from: "ubuntu:24.04",
			steps: fullSteps(), warnings: []string{"line 1: FROM --platform"}},
		{name: "arg defaults", src: "ARG V=3.12\nFROM python:${V}-slim\nARG V\nARG DIR=/opt/app\nWORKDIR $DIR\n" +
			"COPY src ${DIR}/\nENV X=\"$V\" Y=${UNSET:-d} Z=${DIR:+set}\nRUN echo $V\n",
			from: "python:3.12-slim",
			steps: steps(workdir("/opt/app"), cp("src", "/opt/app/", "", ""), env("X", "3.12", "Y", "${UNSET:-d}", "Z", "set"),
				runStep("export V=3.12 DIR=/opt/app; echo $V"), user("user"))},
		{name: "build args override", src: "ARG BASE=base\nFROM ${BASE}\nARG VER=1\nARG NAME\nENV V=$VER N=${NAME:-anon} M=${NAME-x}\n",
			args: map[string]string{"BASE": "alpine:3", "VER": "2", "EXTRA": "x"}, from: "alpine:3",
			steps:    fullSteps(env("V", "2", "N", "anon", "M", "x")),
			warnings: []string{"build args not declared by any ARG: EXTRA"}},
		{name: "arg in scope only after from", src: "ARG G=1\nFROM base\nENV A=$G\n",
			steps: fullSteps(env("A", "$G"))},
		{name: "env shadows arg", src: "FROM base\nARG A=1\nENV B=$A A=2\nENV C=$A\nRUN echo $A\n",
			steps: fullSteps(env("B", "1", "A", "2"), env("C", "$A"), runStep("echo $A"))},
		{name: "arg with quotes and spaces", src: "FROM base\nARG MSG=\"hello world\"\nRUN echo \"$MSG\"\n",
			steps: fullSteps(runStep("export MSG='hello world'; echo \"$MSG\""))},
		{name: "arg modifiers and quotes", src: "FROM base\nARG E=\nARG S=v\nARG U\n" +
			"ENV A=${E:-d} B=${E-d} C=${S:+y} D=${E+y} F=\"q\\\"q\" G='no $S' H=${U-unset}${U:+x}\n",
			steps: fullSteps(env("A", "d", "B", "", "C", "y", "D", "y", "F", `q"q`, "G", `no \$S`, "H", "unset"))},
		{name: "escaped dollar", src: "FROM base\nARG A=1\nWORKDIR /x/\\$A\n", steps: steps(workdir("/x/$A"), user("user"))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			df, err := ParseDockerfile([]byte(tt.src), tt.args)
			if err != nil {
				t.Fatalf("ParseDockerfile: %v", err)
			}
			if df.Spec.FromImage != tt.from || df.Spec.FromTemplate != "" {
				t.Errorf("from: image %q template %q, want image %q", df.Spec.FromImage, df.Spec.FromTemplate, tt.from)
			}
			if !reflect.DeepEqual(df.Spec.Steps, tt.steps) {
				t.Errorf("steps:\n got %+v\nwant %+v", df.Spec.Steps, tt.steps)
			}
			if df.Spec.StartCmd != tt.start || df.Spec.ReadyCmd != "" {
				t.Errorf("start %q ready %q, want start %q", df.Spec.StartCmd, df.Spec.ReadyCmd, tt.start)
			}
			if len(df.Warnings) != len(tt.warnings) {
				t.Fatalf("warnings %q, want %d", df.Warnings, len(tt.warnings))
			}
			for i, w := range tt.warnings {
				if !strings.Contains(df.Warnings[i], w) {
					t.Errorf("warning %d: %q, want it to contain %q", i, df.Warnings[i], w)
				}
			}
			checkCopies(t, df)
		})
	}
}

// checkCopies checks that the Copies name exactly the COPY steps, and that with their hashes
// filled in the Spec is valid.
func checkCopies(t *testing.T, df *Dockerfile) {
	t.Helper()
	n := 0
	for i, st := range df.Spec.Steps {
		if st.Type != StepCopy {
			continue
		}
		if n >= len(df.Copies) {
			t.Fatalf("step %d is a COPY with no CopySource", i)
		}
		c := df.Copies[n]
		if c.Step != i || c.Src != st.Args[0] || c.Dest != st.Args[1] || c.Line < 1 {
			t.Errorf("copies[%d] = %+v, for step %d %q", n, c, i, st.Args)
		}
		n++
	}
	if n != len(df.Copies) {
		t.Errorf("%d copies for %d COPY steps", len(df.Copies), n)
	}
	s := withDummyHashes(df.Spec)
	if err := s.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
}

func withDummyHashes(s Spec) Spec {
	s.Steps = append([]Step{}, s.Steps...)
	for i := range s.Steps {
		if s.Steps[i].Type == StepCopy {
			s.Steps[i].FilesHash = strings.Repeat("ab", 32)
		}
	}
	return s
}

// The JS example of issue 23, as a Dockerfile.
func TestParseDockerfileIssueExample(t *testing.T) {
	src := `FROM e2bdev/base
USER root
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y cowsay
RUN npm install -g left-pad
COPY app/ /app
WORKDIR /app
ENV MODE=prod
RUN make build
USER user
CMD python3 -m http.server 8000
`
	df, err := ParseDockerfile([]byte(src), nil)
	if err != nil {
		t.Fatal(err)
	}
	want := Spec{Steps: steps(
		user("root"),
		runStep("apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y cowsay"),
		runStep("npm install -g left-pad"),
		cp("app/", "/app", "", ""),
		workdir("/app"),
		env("MODE", "prod"),
		runStep("make build"),
		user("user"),
	), StartCmd: "python3 -m http.server 8000"}
	if !reflect.DeepEqual(df.Spec, want) {
		t.Errorf("spec:\n got %+v\nwant %+v", df.Spec, want)
	}
	if want := []CopySource{{Step: 5, Line: 5, Src: "app/", Dest: "/app"}}; !reflect.DeepEqual(df.Copies, want) {
		t.Errorf("copies %+v, want %+v", df.Copies, want)
	}
	if len(df.Warnings) != 0 {
		t.Errorf("warnings %q", df.Warnings)
	}
}

func TestParseDockerfileErrors(t *testing.T) {
	tests := []struct{ name, src, want string }{
		{"no from", "RUN true\n", "line 1: RUN before FROM"},
		{"empty", "# nothing\n", "no FROM"},
		{"multi-stage", "FROM a AS x\nRUN true\nFROM b\n", "line 3: a second FROM: multi-stage"},
		{"scratch", "FROM scratch\n", "line 1: FROM scratch"},
		{"from junk", "FROM a b c d\n", "line 1: FROM: want"},
		{"from unexpanded", "FROM $IMG\n", "line 1: FROM: \"$IMG\" is not an image"},
		{"unknown", "FROM base\nFOO bar\n", `line 2: unknown instruction "FOO"`},
		{"heredoc run", "FROM base\nRUN <<EOF\necho\nEOF\n", "line 2: RUN: heredocs"},
		{"heredoc copy", "FROM base\nCOPY <<-\"EOT\" /x\n", "line 2: COPY: heredocs"},
		{"run flag", "FROM base\nRUN --mount=type=cache,target=/x make\n", "line 2: RUN --mount"},
		{"copy from", "FROM base\nCOPY --from=build /a /b\n", "line 2: COPY --from"},
		{"add url", "FROM base\nADD https://x.org/a.tgz /a\n", "line 2: ADD https://x.org/a.tgz: only sources"},
		{"add git", "FROM base\nADD git@github.com:a/b.git /b\n", "line 2: ADD git@"},
		{"copy escape", "FROM base\nCOPY ../secret /s\n", "line 2: COPY ../secret: the source is outside"},
		{"copy one arg", "FROM base\nCOPY a\n", "line 2: COPY: want a source and a destination"},
		{"copy several to file", "FROM base\nCOPY a b /dst\n", "line 2: COPY: with several sources"},
		{"copy bad chmod", "FROM base\nCOPY --chmod=u+x a /a\n", "line 2: COPY --chmod"},
		{"copy bad chown", "FROM base\nCOPY --chown=Bad!User a /a\n", "line 2: COPY --chown"},
		{"copy unknown flag", "FROM base\nCOPY --parents a /a/\n", "line 2: COPY --parents"},
		{"user id", "FROM base\nUSER 1000\n", "line 2: USER"},
		{"user unexpanded", "FROM base\nUSER $U\n", "line 2: USER"},
		{"env no value", "FROM base\nENV A=1 B\n", `line 2: ENV: "B" is not name=value`},
		{"env legacy no value", "FROM base\nENV A\n", "line 2: ENV A: want a value"},
		{"env bad name", "FROM base\nENV 1A=x\n", "line 2: ENV: \"1A\""},
		{"env unclosed", "FROM base\nENV A=\"x\n", "line 2: ENV: no closing \""},
		{"arg bad name", "FROM base\nARG a-b=1\n", "line 2: ARG"},
		{"arg required", "FROM base\nARG A\nRUN x\nWORKDIR ${A:?must be set}\n", "line 4: WORKDIR: A: must be set"},
		{"bad substitution", "FROM base\nARG A=1\nWORKDIR ${A/x/y}\n", "line 3: WORKDIR: unsupported substitution"},
		{"workdir empty", "FROM base\nWORKDIR\n", "line 2: WORKDIR: want a path"},
		{"run empty", "FROM base\nRUN\n", "line 2: RUN: want a command"},
		{"second escape", "# escape=`\n# escape=\\\nFROM base\n", "line 2: a second escape"},
		{"bad escape", "# escape=x\nFROM base\n", "line 1: escape must be"},
		{"nul", "FROM base\nRUN a\x00b\n", "NUL"},
		{"continued error line", "FROM base\nRUN a \\\n  b\nFROB\n", "line 4:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseDockerfile([]byte(tt.src), nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestParseDockerfileBounds(t *testing.T) {
	big := "FROM base\nRUN " + strings.Repeat("x", MaxDockerfileBytes) + "\n"
	if _, err := ParseDockerfile([]byte(big), nil); err == nil || !strings.Contains(err.Error(), "at most") {
		t.Errorf("a file over 1 MiB: %v", err)
	}
	var b strings.Builder
	b.WriteString("FROM base\n")
	for i := 0; i < MaxSteps; i++ {
		b.WriteString("RUN true\n")
	}
	if _, err := ParseDockerfile([]byte(b.String()), nil); err == nil || !strings.Contains(err.Error(), "steps") {
		t.Errorf("%d RUNs: %v", MaxSteps, err)
	}
	// An ARG doubling itself on each line would reach gigabytes; expansion stops at MaxArgLen.
	b.Reset()
	b.WriteString("FROM base\nARG A=" + strings.Repeat("x", 1024) + "\n")
	for i := 0; i < 20; i++ {
		b.WriteString("ARG A=$A$A\n")
	}
	if _, err := ParseDockerfile([]byte(b.String()), nil); err == nil || !strings.Contains(err.Error(), "expands to over") {
		t.Errorf("a doubling ARG: %v", err)
	}
}

func FuzzParseDockerfile(f *testing.F) {
	for _, s := range []string{
		"FROM base\nRUN true\n",
		"ARG V=1\nFROM python:${V}\nARG V\nENV A=$V B=\"x y\"\nCOPY --chown=user --chmod=0755 a b /d/\nCMD [\"a\"]\n",
		"# escape=`\nFROM base\nRUN a `\n b\nENTRYPOINT [\"x\"]\nCMD y\n",
		"FROM base\nENV A ${B:-c} d\nWORKDIR ${X:+y}\nUSER u:g\nEXPOSE 80\n",
		"FROM base\nRUN <<EOF\nEOF\n",
	} {
		f.Add([]byte(s), "V", "2")
	}
	f.Fuzz(func(t *testing.T, src []byte, k, v string) {
		df, err := ParseDockerfile(src, map[string]string{k: v})
		if err != nil {
			return
		}
		_ = df.Spec.Validate() // must not panic even with the hashes missing
		s := withDummyHashes(df.Spec)
		if err := s.Validate(); err != nil {
			t.Fatalf("an accepted Dockerfile's spec is invalid: %v\n%q", err, src)
		}
		if len(s.Steps) > MaxSteps {
			t.Fatalf("%d steps", len(s.Steps))
		}
	})
}
