// Package envd is the wire contract between Cell's host and envd, the agent in its guests:
// what both sides must agree on, and nothing that runs on either side. It holds envd's version,
// the bodies of POST /init and GET /metrics, Cell's own paths beside E2B's API, the access-token
// header, the lifetime trailer and the /files URL signature. Standard library only: the host
// binary links this package, never a guest package (TestHostLinksNoGuestPackage checks it).
// Running a command through envd, which needs connect-go, is package command's.
package envd
