package build

import (
	"fmt"
	"strings"
)

// lookupFunc resolves a variable for expansion: declared says the name is a build argument
// (anything else is left as written, for the guest), set that it has a value.
type lookupFunc func(name string) (value string, set, declared bool)

// splitWords splits s at blanks outside quotes, keeping quotes and escapes in the words (they
// are removed by expandWord), as Docker splits ENV and ARG.
func splitWords(s string, escape rune) ([]string, error) {
	var words []string
	var b strings.Builder
	inWord := false
	var quote rune
	rs := []rune(s)
	for i := 0; i < len(rs); i++ {
		c := rs[i]
		switch {
		case quote == 0 && (c == ' ' || c == '\t'):
			if inWord {
				words = append(words, b.String())
				b.Reset()
				inWord = false
			}
			continue
		case c == escape && quote != '\'' && i+1 < len(rs):
			b.WriteRune(c)
			i++
			c = rs[i]
		case quote == 0 && (c == '"' || c == '\''):
			quote = c
		case c == quote:
			quote = 0
		}
		b.WriteRune(c)
		inWord = true
	}
	if quote != 0 {
		return nil, fmt.Errorf("no closing %c", quote)
	}
	if inWord {
		words = append(words, b.String())
	}
	return words, nil
}

// expandWord removes quotes and escapes from a word and substitutes the build arguments in it,
// with Docker's rules: $X, ${X}, ${X:-d}, ${X-d}, ${X:+a}, ${X+a}, ${X:?msg}, ${X?msg};
// nothing inside single quotes; the escape character makes the next character literal (inside
// double quotes only before ", $ and itself). A variable that is not a build argument is
// written back as it was, for the guest to expand. The result is bounded by MaxArgLen.
func expandWord(s string, escape rune, look lookupFunc) (string, error) {
	return expand(s, escape, look, false)
}

// expandEnvValue is expandWord for an ENV value, which the builder expands again in the guest
// (see guestQuote): what is literal here (quoted, escaped, a build argument's value) has its
// $ and \ escaped with a \, so that only the references left for the guest expand there.
func expandEnvValue(s string, escape rune, look lookupFunc) (string, error) {
	return expand(s, escape, look, true)
}

func expand(s string, escape rune, look lookupFunc, guest bool) (string, error) {
	x := &expander{rs: []rune(s), escape: escape, look: look, guest: guest}
	out, err := x.word(false)
	if err != nil {
		return "", err
	}
	if x.i < len(x.rs) {
		return "", fmt.Errorf("unexpected %q in %q", x.rs[x.i], s)
	}
	return out, nil
}

type expander struct {
	rs     []rune
	i      int
	escape rune
	look   lookupFunc
	guest  bool // escape what is literal for the guest's expansion
}

// lit is literal text as the result carries it.
func (x *expander) lit(s string) string {
	if !x.guest || !strings.ContainsAny(s, `$\`) {
		return s
	}
	return strings.NewReplacer(`\`, `\\`, `$`, `\$`).Replace(s)
}

// word reads up to the end, or up to an unmatched } when inBrace (a ${X:-word}'s word).
func (x *expander) word(inBrace bool) (string, error) {
	var b strings.Builder
	grow := func(s string) error {
		if b.Len()+len(s) > MaxArgLen {
			return fmt.Errorf("expands to over %d bytes", MaxArgLen)
		}
		b.WriteString(s)
		return nil
	}
	for x.i < len(x.rs) {
		c := x.rs[x.i]
		switch {
		case inBrace && c == '}':
			return b.String(), nil
		case c == x.escape:
			x.i++
			if x.i < len(x.rs) {
				c = x.rs[x.i]
			}
			x.i++
			if err := grow(x.lit(string(c))); err != nil {
				return "", err
			}
		case c == '\'':
			end := runeIndex(x.rs, x.i+1, '\'')
			if end < 0 {
				return "", fmt.Errorf("no closing '")
			}
			if err := grow(x.lit(string(x.rs[x.i+1 : end]))); err != nil {
				return "", err
			}
			x.i = end + 1
		case c == '"':
			x.i++
			for {
				if x.i >= len(x.rs) {
					return "", fmt.Errorf(`no closing "`)
				}
				c = x.rs[x.i]
				if c == '"' {
					x.i++
					break
				}
				if c == '$' {
					v, err := x.variable()
					if err != nil {
						return "", err
					}
					if err := grow(v); err != nil {
						return "", err
					}
					continue
				}
				if c == x.escape && x.i+1 < len(x.rs) {
					if n := x.rs[x.i+1]; n == '"' || n == '$' || n == x.escape {
						x.i++
						c = n
					}
				}
				x.i++
				if err := grow(x.lit(string(c))); err != nil {
					return "", err
				}
			}
		case c == '$':
			v, err := x.variable()
			if err != nil {
				return "", err
			}
			if err := grow(v); err != nil {
				return "", err
			}
		default:
			x.i++
			if err := grow(x.lit(string(c))); err != nil {
				return "", err
			}
		}
	}
	if inBrace {
		return "", fmt.Errorf("no closing }")
	}
	return b.String(), nil
}

// variable reads a reference at x.i (a $) and returns what it stands for.
func (x *expander) variable() (string, error) {
	start := x.i
	x.i++
	if x.i >= len(x.rs) {
		return "$", nil
	}
	if x.rs[x.i] != '{' {
		name := x.name()
		if name == "" {
			return "$", nil // a $ before no name is itself
		}
		v, set, declared := x.look(name)
		switch {
		case !declared:
			return "$" + name, nil
		case !set:
			return "", nil
		}
		return x.lit(v), nil
	}
	x.i++
	name := x.name()
	if name == "" {
		return "", fmt.Errorf("bad substitution %q", string(x.rs[start:min(len(x.rs), x.i+1)]))
	}
	if x.i >= len(x.rs) {
		return "", fmt.Errorf("no closing } after ${%s", name)
	}
	v, set, declared := x.look(name)
	if x.rs[x.i] == '}' {
		x.i++
		switch {
		case !declared:
			return "${" + name + "}", nil
		case !set:
			return "", nil
		}
		return x.lit(v), nil
	}
	op := string(x.rs[x.i])
	if op == ":" && x.i+1 < len(x.rs) {
		x.i++
		op += string(x.rs[x.i])
	}
	switch op {
	case ":-", "-", ":+", "+", ":?", "?":
	default:
		return "", fmt.Errorf("unsupported substitution ${%s%s…}", name, op)
	}
	x.i++
	word, err := x.word(true)
	if err != nil {
		return "", err
	}
	x.i++ // the }
	if !declared {
		return "${" + name + op + word + "}", nil
	}
	// With the colon, an empty value counts as unset.
	present := set && (v != "" || !strings.HasPrefix(op, ":"))
	switch strings.TrimPrefix(op, ":") {
	case "-":
		if present {
			return x.lit(v), nil
		}
		return word, nil
	case "+":
		if present {
			return word, nil
		}
		return "", nil
	default: // ?
		if present {
			return x.lit(v), nil
		}
		if word == "" {
			word = "not set"
		}
		return "", fmt.Errorf("%s: %s", name, word)
	}
}

func (x *expander) name() string {
	start := x.i
	for x.i < len(x.rs) {
		c := x.rs[x.i]
		if c != '_' && (c < 'a' || c > 'z') && (c < 'A' || c > 'Z') && (c < '0' || c > '9') {
			break
		}
		x.i++
	}
	return string(x.rs[start:x.i])
}

func runeIndex(rs []rune, from int, c rune) int {
	for i := from; i < len(rs); i++ {
		if rs[i] == c {
			return i
		}
	}
	return -1
}
