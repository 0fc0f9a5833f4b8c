package cli

import (
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// printable makes a message safe to print on a terminal: control characters (C0 but newline and
// tab, DEL, C1), bidirectional overrides and bytes that are not UTF-8 are shown escaped, as Go
// quotes them. Text that a sandbox chose (its file names, its error messages) reaches the user's
// terminal in Cell's own messages; raw, it could move the cursor, rewrite what is shown or set
// the window's title. Newlines and tabs are kept for Cell's own messages (cobra's "Did you mean
// this?"); what a sandbox chose goes through printableName first.
func printable(s string) string {
	return escape(s, func(r rune) bool { return r == '\n' || r == '\t' })
}

// printableName is printable for text a sandbox chose (a name, envd's message) that Cell puts
// inside a line of its own: newlines, carriage returns and tabs are escaped too, so that it
// cannot fake a line, or a column, of Cell's output.
func printableName(s string) string {
	return escape(s, func(rune) bool { return false })
}

// escape escapes in s what printable does, but the control characters keep says.
func escape(s string, keep func(rune) bool) string {
	safe := func(r rune) bool {
		return keep(r) || (!unicode.IsControl(r) && !unicode.Is(unicode.Bidi_Control, r))
	}
	clean := true
	for _, r := range s {
		if r == utf8.RuneError || !safe(r) {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size <= 1:
			b.WriteString(`\x` + strconv.FormatUint(uint64(s[i])|0x100, 16)[1:])
		case safe(r):
			b.WriteString(s[i : i+size])
		default:
			q := strconv.QuoteRuneToASCII(r)
			b.WriteString(q[1 : len(q)-1])
		}
		i += size
	}
	return b.String()
}
