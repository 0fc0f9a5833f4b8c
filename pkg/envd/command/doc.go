// Package command runs one command through envd's process service (connect-go): it starts the
// process as a user, copies input to its stdin, streams its output as it comes, and reads how it
// ended with the run time envd reports in the stream's trailer. The host's sandboxes and Cell's
// Go client both run commands through it.
//
// It is apart from package envd, the wire contract, because it needs connect-go and the
// generated process client, and envd stays standard library only. It links no guest package.
package command
