// Package qmp is a small client for the QEMU Machine Protocol: it connects to a QMP unix socket,
// negotiates capabilities, executes commands (matched to their replies by id, safe for concurrent
// use) and delivers asynchronous events. It owns one reader goroutine per connection, which ends
// when the connection is closed.
package qmp
