// Package ids owns Cell's identifiers: it generates sandbox and template ids and validates every
// identifier that reaches the host from a user (ids, names) so that none can name a path, carry a
// separator, or grow without bound.
package ids
