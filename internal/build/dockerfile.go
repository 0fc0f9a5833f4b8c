package build

import (
	"bytes"
	"encoding/json"
	"fmt"
	"path"
	"sort"
	"strings"
)

// Limits of a Dockerfile. A line cannot be longer than the file, so the file's bound is also
// the bound of a line (continued lines joined). maxSpecBytes bounds what ARG expansion can grow
// the translated steps to (an ARG can double itself per line).
const (
	MaxDockerfileBytes = 1 << 20
	maxSpecBytes       = 16 << 20
)

// Dockerfile is a Dockerfile translated into a build: its Spec, the local sources its COPY
// steps upload (the CLI packs each one with PackCopy and fills in the step's FilesHash) and
// warnings about what it ignored, each naming its line.
type Dockerfile struct {
	Spec     Spec
	Copies   []CopySource
	Warnings []string
}

// CopySource is the upload of one COPY step: Spec.Steps[Step], from line Line, packs Src
// (relative to the build context) for Dest.
type CopySource struct {
	Step      int
	Line      int
	Src, Dest string
}

// isBaseImage says whether an image name (without its tag) is Cell's own base: E2B's default
// image or Cell's.
func isBaseImage(name string) bool {
	name = strings.TrimPrefix(name, "docker.io/")
	return name == "e2bdev/base" || name == "base" || name == "cell/base"
}

// IsBaseImage says whether an image reference is Cell's own base image (E2B's default,
// e2bdev/base, untagged or :latest).
func IsBaseImage(ref string) bool {
	name, tag, _ := strings.Cut(ref, ":")
	return isBaseImage(name) && (tag == "" || tag == "latest")
}

// ignoredWhy says why an instruction Docker has is of no use to a template ("" if it is not
// one of those).
func ignoredWhy(kw string) string {
	switch kw {
	case "EXPOSE":
		return "ports need no declaring in a sandbox"
	case "LABEL":
		return "templates have no labels"
	case "HEALTHCHECK":
		return "use the ready command instead"
	case "STOPSIGNAL":
		return "sandboxes are not stopped by signal"
	case "VOLUME":
		return "sandboxes have no volumes"
	case "SHELL":
		return "RUN always uses the guest's shell"
	case "ONBUILD":
		return "templates have no downstream builds"
	case "MAINTAINER":
		return "it is deprecated"
	}
	return ""
}

// ParseDockerfile translates the subset of a Dockerfile that E2B supports into a build:
// FROM (one), RUN, COPY/ADD of local files, ENV, ARG, WORKDIR, USER, CMD/ENTRYPOINT. It
// refuses what it cannot translate faithfully (multi-stage builds, heredocs, remote ADD,
// COPY --from) with an error naming the line, and warns about instructions it ignores.
//
// ARGs are substituted on the host, as Docker does, in FROM, COPY/ADD, ENV, ARG, WORKDIR and
// USER; and, since Docker gives RUN the ARGs in scope as environment variables, a RUN after
// an ARG is prefixed with their exports. References to anything else (ENV variables, the
// image's environment) are left as written: the builder expands them in the guest.
//
// Like E2B's SDK (fromDockerfile in its JS SDK, which this matches): the steps start with
// USER root and WORKDIR / (Docker's defaults, not the template's), and end with USER user if
// the file never set a user and WORKDIR /home/user if it never set a working directory.
// Unlike the SDK, an ARG is not turned into a persistent ENV (Docker keeps build arguments out
// of the image), CMD and ENTRYPOINT combine as Docker combines them, and the ready command is
// left empty for the builder's default.
func ParseDockerfile(src []byte, buildArgs map[string]string) (*Dockerfile, error) {
	if len(src) > MaxDockerfileBytes {
		return nil, fmt.Errorf("dockerfile: %d bytes, at most %d", len(src), MaxDockerfileBytes)
	}
	for k, v := range buildArgs {
		// A step's arguments cannot hold a NUL (see Spec.Validate): refused here, by name.
		if strings.IndexByte(k, 0) >= 0 || strings.IndexByte(v, 0) >= 0 {
			return nil, fmt.Errorf("build argument %q: a NUL byte", strings.ReplaceAll(k, "\x00", `\0`))
		}
		if len(v) > MaxArgLen {
			return nil, fmt.Errorf("build argument %q: over %d bytes", k, MaxArgLen)
		}
	}
	lines, err := logicalLines(src)
	if err != nil {
		return nil, err
	}
	p := &dfParser{
		df:        &Dockerfile{},
		buildArgs: buildArgs,
		global:    map[string]argValue{},
		args:      map[string]argValue{},
		env:       map[string]bool{},
		used:      map[string]bool{},
	}
	for _, l := range lines {
		if err := p.instruction(l); err != nil {
			return nil, fmt.Errorf("dockerfile line %d: %w", l.n, err)
		}
	}
	return p.finish()
}

// line is one instruction: its continued lines joined, the escape character the file uses, and
// the number of its first line.
type line struct {
	n      int
	text   string
	escape rune
}

// logicalLines splits src into instructions: parser directives read (only escape matters),
// comments and blank lines dropped, continued lines joined as Docker joins them (the escape
// character and the line break removed; comment and blank lines inside a continuation
// skipped).
func logicalLines(src []byte) ([]line, error) {
	if bytes.IndexByte(src, 0) >= 0 {
		return nil, fmt.Errorf("dockerfile: a NUL byte")
	}
	src = bytes.TrimPrefix(src, []byte("\xef\xbb\xbf"))
	raw := strings.Split(string(src), "\n")
	escape := '\\'
	directives, escapeSet := true, false
	var out []line
	var cur *line
	var b strings.Builder
	for i, r := range raw {
		n := i + 1
		r = strings.TrimSuffix(r, "\r")
		trimmed := strings.TrimLeft(r, " \t")
		if directives {
			if name, val, ok := directive(trimmed); ok {
				if name == "escape" {
					if escapeSet {
						return nil, fmt.Errorf("dockerfile line %d: a second escape directive", n)
					}
					if val != "\\" && val != "`" {
						return nil, fmt.Errorf("dockerfile line %d: escape must be \\ or `, not %q", n, val)
					}
					escape, escapeSet = rune(val[0]), true
				}
				continue
			}
			directives = false
		}
		if strings.HasPrefix(trimmed, "#") || (cur != nil && strings.TrimSpace(r) == "") {
			continue // comments, and blank lines inside a continuation, are dropped
		}
		if cur == nil {
			if strings.TrimSpace(r) == "" {
				continue
			}
			cur = &line{n: n, escape: escape}
			b.Reset()
			r = trimmed
		}
		body := strings.TrimRight(r, " \t")
		if strings.HasSuffix(body, string(escape)) {
			b.WriteString(strings.TrimSuffix(body, string(escape)))
			continue
		}
		b.WriteString(r)
		cur.text = strings.TrimSpace(b.String())
		out = append(out, *cur)
		cur = nil
	}
	if cur != nil { // the file ended in a continuation: the instruction ends there
		cur.text = strings.TrimSpace(b.String())
		if cur.text != "" {
			out = append(out, *cur)
		}
	}
	return out, nil
}

// directive reads a parser directive, "# name=value", with the name lower-cased.
func directive(s string) (name, val string, ok bool) {
	if !strings.HasPrefix(s, "#") {
		return "", "", false
	}
	k, v, ok := strings.Cut(s[1:], "=")
	if !ok {
		return "", "", false
	}
	k = strings.ToLower(strings.TrimSpace(k))
	for _, c := range k {
		if (c < 'a' || c > 'z') && c != '_' && c != '-' {
			return "", "", false
		}
	}
	if k == "" {
		return "", "", false
	}
	return k, strings.TrimSpace(v), true
}

// argValue is an ARG in scope: declared, and set to value or not set at all.
type argValue struct {
	value string
	set   bool
}

type dfParser struct {
	df        *Dockerfile
	buildArgs map[string]string
	// global are the ARGs declared before FROM (visible to FROM, and to a stage that
	// declares them again); args are the stage's, in argOrder; env the names ENV set, which
	// then shadow an ARG of the same name, as in Docker.
	global, args map[string]argValue
	argOrder     []string
	env          map[string]bool
	used         map[string]bool // build args some ARG declared
	from         bool
	userSet      bool
	workdirSet   bool
	entrypoint   *startCommand
	cmd          *startCommand
	cmdLine      int
}

// startCommand is a CMD or ENTRYPOINT: exec form (argv) or shell form (shell).
type startCommand struct {
	exec  bool
	argv  []string
	shell string
}

func (p *dfParser) instruction(l line) error {
	var kw, rest string
	if i := strings.IndexAny(l.text, " \t"); i >= 0 {
		kw, rest = l.text[:i], strings.TrimSpace(l.text[i+1:])
	} else {
		kw, rest = l.text, ""
	}
	kw = strings.ToUpper(kw)
	if !p.from && kw != "FROM" && kw != "ARG" {
		return fmt.Errorf("%s before FROM", kw)
	}
	switch kw {
	case "FROM":
		return p.fromInstr(l, rest)
	case "ARG":
		return p.argInstr(l, rest)
	case "RUN":
		return p.runInstr(l, rest)
	case "COPY", "ADD":
		return p.copyInstr(l, kw, rest)
	case "ENV":
		return p.envInstr(l, rest)
	case "WORKDIR":
		w, err := p.expand(l, rest)
		if err != nil {
			return fmt.Errorf("WORKDIR: %w", err)
		}
		if w == "" {
			return fmt.Errorf("WORKDIR: want a path")
		}
		p.workdirSet = true
		return p.step(Step{Type: StepWorkdir, Args: []string{w}})
	case "USER":
		u, err := p.expand(l, rest)
		if err != nil {
			return fmt.Errorf("USER: %w", err)
		}
		u, _, _ = strings.Cut(u, ":") // the group is the user's own in a template
		if !validUser(u) {
			return fmt.Errorf("USER: %q is not a user name of [a-z_][a-z0-9_-]* (Cell creates users by name, not by id)", u)
		}
		p.userSet = true
		return p.step(Step{Type: StepUser, Args: []string{u}})
	case "CMD", "ENTRYPOINT":
		c, err := parseCommand(rest)
		if err != nil {
			return fmt.Errorf("%s: %w", kw, err)
		}
		if kw == "CMD" {
			p.cmd, p.cmdLine = c, l.n
		} else {
			p.entrypoint = c
		}
		return nil
	}
	if why := ignoredWhy(kw); why != "" {
		p.df.Warnings = append(p.df.Warnings, fmt.Sprintf("line %d: %s is not supported in templates (%s); ignored", l.n, kw, why))
		return nil
	}
	return fmt.Errorf("unknown instruction %q", kw)
}

func (p *dfParser) fromInstr(l line, rest string) error {
	if p.from {
		return fmt.Errorf("a second FROM: multi-stage Dockerfiles are not supported")
	}
	p.from = true
	words := strings.Fields(rest)
	for len(words) > 0 && strings.HasPrefix(words[0], "--") {
		p.df.Warnings = append(p.df.Warnings, fmt.Sprintf("line %d: FROM %s is ignored", l.n, words[0]))
		words = words[1:]
	}
	switch {
	case len(words) == 1:
	case len(words) == 3 && strings.EqualFold(words[1], "AS"):
	default:
		return fmt.Errorf("FROM: want an image [AS name]")
	}
	// FROM sees only the ARGs declared before it.
	img, err := expandWord(words[0], l.escape, p.lookupIn(p.global, false))
	if err != nil {
		return fmt.Errorf("FROM: %w", err)
	}
	if img == "" || strings.ContainsAny(img, " \t$") || strings.HasPrefix(img, "-") {
		return fmt.Errorf("FROM: %q is not an image reference", img)
	}
	name, tag, _ := strings.Cut(img, ":")
	switch {
	case isBaseImage(name) && (tag == "" || tag == "latest"):
		// Cell's base: FromImage and FromTemplate stay empty.
	case img == "scratch":
		return fmt.Errorf("FROM scratch: a template needs an operating system; use e2bdev/base or an image")
	default:
		p.df.Spec.FromImage = img
	}
	// Docker clears the stage's ARGs at FROM; the global ones are visible again only where
	// the stage declares them.
	p.args = map[string]argValue{}
	p.argOrder = nil
	return nil
}

func (p *dfParser) argInstr(l line, rest string) error {
	words, err := splitWords(rest, l.escape)
	if err != nil {
		return fmt.Errorf("ARG: %w", err)
	}
	if len(words) == 0 {
		return fmt.Errorf("ARG: want name[=default]")
	}
	scope := p.args
	if !p.from {
		scope = p.global
	}
	for _, w := range words {
		name, def, hasDef := strings.Cut(w, "=")
		if !validEnvName(name) {
			return fmt.Errorf("ARG: %q is not a name of [A-Za-z_][A-Za-z0-9_]*", name)
		}
		var v argValue
		if hasDef {
			d, err := expandWord(def, l.escape, p.lookupIn(scope, true))
			if err != nil {
				return fmt.Errorf("ARG %s: %w", name, err)
			}
			v = argValue{d, true}
		} else if g, ok := p.global[name]; ok && p.from {
			v = g
		}
		if b, ok := p.buildArgs[name]; ok {
			v = argValue{b, true}
			p.used[name] = true
		}
		if _, seen := scope[name]; !seen && p.from {
			p.argOrder = append(p.argOrder, name)
		}
		scope[name] = v
	}
	return nil
}

func (p *dfParser) runInstr(l line, rest string) error {
	if strings.HasPrefix(rest, "--") {
		flag := strings.Fields(rest)[0]
		return fmt.Errorf("RUN %s: RUN flags are not supported", flag)
	}
	if err := noHeredoc(rest); err != nil {
		return fmt.Errorf("RUN: %w", err)
	}
	c, err := parseCommand(rest)
	if err != nil {
		return fmt.Errorf("RUN: %w", err)
	}
	sh := c.shell
	if c.exec {
		sh = shellJoin(c.argv)
	}
	if strings.TrimSpace(sh) == "" {
		return fmt.Errorf("RUN: want a command")
	}
	// Docker runs RUN with the stage's ARGs in its environment (an ENV of the same name
	// wins); the guest knows nothing of ARGs, so the command exports them itself.
	var exports []string
	for _, name := range p.argOrder {
		if v := p.args[name]; v.set && !p.env[name] {
			exports = append(exports, name+"="+shellQuote(v.value))
		}
	}
	if len(exports) > 0 {
		sh = "export " + strings.Join(exports, " ") + "; " + sh
	}
	return p.step(Step{Type: StepRun, Args: []string{sh}})
}

func (p *dfParser) copyInstr(l line, kw, rest string) error {
	var user, mode string
	for strings.HasPrefix(rest, "--") {
		flag := rest
		rest = ""
		if i := strings.IndexAny(flag, " \t"); i >= 0 {
			flag, rest = flag[:i], strings.TrimSpace(flag[i+1:])
		}
		name, val, _ := strings.Cut(flag[2:], "=")
		val, err := expandWord(val, l.escape, p.lookup())
		if err != nil {
			return fmt.Errorf("%s %s: %w", kw, flag, err)
		}
		switch strings.ToLower(name) {
		case "chown":
			user, _, _ = strings.Cut(val, ":")
			if !validUser(user) && !allDigits(user) {
				return fmt.Errorf("%s --chown: %q is not a user name or id", kw, user)
			}
		case "chmod":
			m, err := ParseMode(val)
			if err != nil {
				return fmt.Errorf("%s --chmod (octal only): %w", kw, err)
			}
			mode = fmt.Sprintf("%04o", m)
		case "from":
			return fmt.Errorf("%s --from: copying from another stage or image is not supported", kw)
		case "link":
			p.df.Warnings = append(p.df.Warnings, fmt.Sprintf("line %d: %s --link is ignored", l.n, kw))
		default:
			return fmt.Errorf("%s %s: the flag is not supported", kw, flag)
		}
	}
	if err := noHeredoc(rest); err != nil {
		return fmt.Errorf("%s: %w", kw, err)
	}
	var words []string
	if list, ok := jsonList(rest); ok {
		words = list
	} else {
		words = strings.Fields(rest)
	}
	if len(words) < 2 {
		return fmt.Errorf("%s: want a source and a destination", kw)
	}
	for i, w := range words {
		x, err := expandWord(w, l.escape, p.lookup())
		if err != nil {
			return fmt.Errorf("%s: %w", kw, err)
		}
		words[i] = x
	}
	srcs, dest := words[:len(words)-1], words[len(words)-1]
	if dest == "" {
		return fmt.Errorf("%s: an empty destination", kw)
	}
	if len(srcs) > 1 && !strings.HasSuffix(dest, "/") {
		return fmt.Errorf("%s: with several sources the destination must be a directory ending in /", kw)
	}
	for _, s := range srcs {
		if u := strings.ToLower(s); strings.Contains(u, "://") || strings.HasPrefix(u, "git@") {
			return fmt.Errorf("%s %s: only sources in the build context are supported", kw, s)
		}
		// Docker reads a source as relative to the context even when it starts with /; it
		// never reaches outside it.
		clean := path.Clean("/" + s)[1:]
		if clean == "" {
			clean = "."
		}
		if strings.HasPrefix(path.Clean(s), "../") || path.Clean(s) == ".." {
			return fmt.Errorf("%s %s: the source is outside the build context", kw, s)
		}
		if strings.HasSuffix(s, "/") && clean != "." {
			clean += "/"
		}
		if kw == "ADD" && isArchive(clean) {
			p.df.Warnings = append(p.df.Warnings, fmt.Sprintf("line %d: ADD %s is copied as it is, not unpacked", l.n, s))
		}
		p.df.Copies = append(p.df.Copies, CopySource{Step: len(p.df.Spec.Steps), Line: l.n, Src: clean, Dest: dest})
		if err := p.step(Step{Type: StepCopy, Args: []string{clean, dest, user, mode}}); err != nil {
			return err
		}
	}
	return nil
}

func (p *dfParser) envInstr(l line, rest string) error {
	words, err := splitWords(rest, l.escape)
	if err != nil {
		return fmt.Errorf("ENV: %w", err)
	}
	if len(words) == 0 {
		return fmt.Errorf("ENV: want name=value")
	}
	var kv []string
	if !strings.Contains(words[0], "=") {
		// The legacy form, ENV name value with spaces: the value is the rest of the line.
		_, v, _ := strings.Cut(rest, words[0])
		if strings.TrimSpace(v) == "" {
			return fmt.Errorf("ENV %s: want a value (ENV name value, or ENV name=value)", words[0])
		}
		val, err := expandEnvValue(strings.TrimSpace(v), l.escape, p.lookup())
		if err != nil {
			return fmt.Errorf("ENV %s: %w", words[0], err)
		}
		kv = []string{words[0], val}
	} else {
		for _, w := range words {
			k, v, ok := strings.Cut(w, "=")
			if !ok {
				return fmt.Errorf("ENV: %q is not name=value", w)
			}
			val, err := expandEnvValue(v, l.escape, p.lookup())
			if err != nil {
				return fmt.Errorf("ENV %s: %w", k, err)
			}
			kv = append(kv, k, val)
		}
	}
	for i := 0; i < len(kv); i += 2 {
		if !validEnvName(kv[i]) {
			return fmt.Errorf("ENV: %q is not a name of [A-Za-z_][A-Za-z0-9_]*", kv[i])
		}
	}
	// Only now: the values above still saw the ARGs these names shadow from here on.
	for i := 0; i < len(kv); i += 2 {
		p.env[kv[i]] = true
	}
	return p.step(Step{Type: StepEnv, Args: kv})
}

func (p *dfParser) step(st Step) error {
	if len(p.df.Spec.Steps) >= MaxSteps {
		return fmt.Errorf("more than %d steps", MaxSteps)
	}
	p.df.Spec.Steps = append(p.df.Spec.Steps, st)
	return nil
}

func (p *dfParser) finish() (*Dockerfile, error) {
	if !p.from {
		return nil, fmt.Errorf("dockerfile: no FROM instruction")
	}
	df := p.df
	// E2B's order: USER root and WORKDIR / first, then the file, then the template's
	// defaults where the file left them.
	pre := []Step{{Type: StepUser, Args: []string{"root"}}, {Type: StepWorkdir, Args: []string{"/"}}}
	df.Spec.Steps = append(pre, df.Spec.Steps...)
	for i := range df.Copies {
		df.Copies[i].Step += len(pre)
	}
	if !p.userSet {
		df.Spec.Steps = append(df.Spec.Steps, Step{Type: StepUser, Args: []string{"user"}})
	}
	if !p.workdirSet {
		df.Spec.Steps = append(df.Spec.Steps, Step{Type: StepWorkdir, Args: []string{"/home/user"}})
	}
	if len(df.Spec.Steps) > MaxSteps {
		return nil, fmt.Errorf("dockerfile: %d steps with the template's own, at most %d", len(df.Spec.Steps), MaxSteps)
	}
	df.Spec.StartCmd = p.startCmd()
	total := len(df.Spec.StartCmd)
	for i, st := range df.Spec.Steps {
		for _, a := range st.Args {
			if len(a) > MaxArgLen {
				return nil, fmt.Errorf("dockerfile: step %d (%s): an argument over %d bytes", i+1, st.Type, MaxArgLen)
			}
			total += len(a)
		}
	}
	if total > maxSpecBytes || len(df.Spec.StartCmd) > MaxCmdLen {
		return nil, fmt.Errorf("dockerfile: the translated build is over %d bytes", maxSpecBytes)
	}
	var unused []string
	for k := range p.buildArgs {
		if !p.used[k] {
			unused = append(unused, k)
		}
	}
	if len(unused) > 0 {
		sort.Strings(unused)
		df.Warnings = append(df.Warnings, fmt.Sprintf("build args not declared by any ARG: %s", strings.Join(unused, ", ")))
	}
	return df, nil
}

// startCmd combines ENTRYPOINT and CMD as Docker does: an exec-form ENTRYPOINT takes CMD as its
// arguments (a shell-form CMD as sh -c), a shell-form ENTRYPOINT ignores CMD.
func (p *dfParser) startCmd() string {
	e, c := p.entrypoint, p.cmd
	switch {
	case e == nil && c == nil:
		return ""
	case e == nil && c.exec:
		return shellJoin(c.argv)
	case e == nil:
		return c.shell
	case !e.exec:
		if c != nil {
			p.df.Warnings = append(p.df.Warnings, fmt.Sprintf("line %d: CMD is ignored after a shell-form ENTRYPOINT, as in Docker", p.cmdLine))
		}
		return e.shell
	case c == nil:
		return shellJoin(e.argv)
	case c.exec:
		return shellJoin(append(append([]string{}, e.argv...), c.argv...))
	default:
		return shellJoin(append(append([]string{}, e.argv...), "/bin/sh", "-c", c.shell))
	}
}

// lookup resolves a name for expansion in the stage: an ARG unless an ENV shadows it.
func (p *dfParser) lookup() lookupFunc {
	return func(name string) (string, bool, bool) {
		if p.env[name] {
			return "", false, false
		}
		v, ok := p.args[name]
		return v.value, v.set, ok
	}
}

// lookupIn resolves names among the ARGs of scope (withEnv: unless an ENV shadows them).
func (p *dfParser) lookupIn(scope map[string]argValue, withEnv bool) lookupFunc {
	return func(name string) (string, bool, bool) {
		if withEnv && p.env[name] {
			return "", false, false
		}
		v, ok := scope[name]
		return v.value, v.set, ok
	}
}

func (p *dfParser) expand(l line, s string) (string, error) {
	return expandWord(s, l.escape, p.lookup())
}

// parseCommand reads the exec form (a JSON array of strings) or, failing that, the shell
// form, as Docker does.
func parseCommand(rest string) (*startCommand, error) {
	if list, ok := jsonList(rest); ok {
		return &startCommand{exec: true, argv: list}, nil
	}
	if rest == "" {
		return nil, fmt.Errorf("want a command")
	}
	return &startCommand{shell: rest}, nil
}

func jsonList(s string) ([]string, bool) {
	if !strings.HasPrefix(s, "[") {
		return nil, false
	}
	var list []string
	if err := json.Unmarshal([]byte(s), &list); err != nil {
		return nil, false
	}
	return list, true
}

// noHeredoc refuses a heredoc (<<EOF, <<-EOF, <<"EOF"), which BuildKit would turn into a file
// or a script and this translation cannot.
func noHeredoc(s string) error {
	for _, w := range strings.Fields(s) {
		w = strings.TrimLeft(w, "0123456789")
		if !strings.HasPrefix(w, "<<") {
			continue
		}
		w = strings.TrimPrefix(strings.TrimPrefix(w, "<<"), "-")
		w = strings.TrimLeft(w, `"'`)
		if w != "" && (w[0] == '_' || w[0] >= 'A' && w[0] <= 'Z' || w[0] >= 'a' && w[0] <= 'z') {
			return fmt.Errorf("heredocs (<<%s) are not supported", w)
		}
	}
	return nil
}

func isArchive(s string) bool {
	for _, ext := range []string{".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar.zst"} {
		if strings.HasSuffix(strings.ToLower(s), ext) {
			return true
		}
	}
	return false
}

func allDigits(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// shellJoin quotes each argument for sh and joins them, so that sh runs exactly argv.
func shellJoin(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		q[i] = shellQuote(a)
	}
	return strings.Join(q, " ")
}

// shellQuote leaves a word of only safe characters as it is (no =, so that a first word is
// never read as an assignment) and single-quotes anything else.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_@%+:,./-") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
