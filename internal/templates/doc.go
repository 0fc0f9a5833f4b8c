// Package templates owns a team's templates as E2B's API shows them: their names and tags,
// their builds (queued, run by package build, with their logs and status), the files uploaded
// for COPY steps, and which snapshot a template name starts sandboxes from.
package templates
