package client

import (
	"fmt"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Bounds on what a sandbox's envd answers. connect-go reads a message of any size unless told,
// and decoding amplifies: each 2-byte empty entry of a listing becomes a whole EntryInfo (a 3 MB
// ListDir answer took 448 MB), so the entries are also counted on the wire before decoding.
const (
	// MaxFilesystemMessage bounds one answer of envd's filesystem service. The largest is the
	// listing of a big directory: about 100 bytes an entry (name, path, mode, permissions, owner,
	// group, time), so 64 MiB is over half a million entries.
	MaxFilesystemMessage = 64 << 20
	// MaxProcessMessage bounds one message of envd's process service: output comes in chunks of
	// 32 KiB; a process list is a few hundred bytes a process.
	MaxProcessMessage = 4 << 20
	// MaxRepeated bounds the elements of any one repeated field of an answer (a listing's
	// entries, a process list). At ~200 bytes each once decoded, a listing at the bound costs
	// ~200 MB, whatever the sandbox packs in its message.
	MaxRepeated = 1_000_000
)

// boundedCodec is connect-go's binary protobuf codec ("proto"), refusing an answer with more
// than max elements in one top-level repeated field before decoding it.
type boundedCodec struct{ max int }

func (boundedCodec) Name() string { return "proto" }

func (boundedCodec) Marshal(m any) ([]byte, error) {
	pm, ok := m.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("%T is not a protobuf message", m)
	}
	return proto.Marshal(pm)
}

func (c boundedCodec) Unmarshal(b []byte, m any) error {
	pm, ok := m.(proto.Message)
	if !ok {
		return fmt.Errorf("%T is not a protobuf message", m)
	}
	if err := checkRepeated(b, pm.ProtoReflect().Descriptor(), c.max); err != nil {
		return err
	}
	if err := proto.Unmarshal(b, pm); err != nil {
		return fmt.Errorf("unmarshal into %T: %w", m, err)
	}
	return nil
}

// checkRepeated counts, without decoding, the elements of each repeated field of messages,
// strings or bytes (or map) at the top of the message b of type md, and refuses more than max in
// one. Each such element is one length-delimited field on the wire (anything else under its number
// is kept as an unknown field, not decoded as an element); repeated numbers are left alone, their
// decoding grows a byte eight times at most. A malformed b is left for proto.Unmarshal to refuse.
func checkRepeated(b []byte, md protoreflect.MessageDescriptor, max int) error {
	counts := map[protowire.Number]int{}
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil
		}
		b = b[n:]
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return nil
		}
		b = b[n:]
		if typ != protowire.BytesType || !elements(md.Fields().ByNumber(num)) {
			continue
		}
		fd := md.Fields().ByNumber(num)
		counts[num]++
		if counts[num] > max {
			return fmt.Errorf("more than %d elements in %s: refused unread (a bound of Cell's client)", max, fd.Name())
		}
	}
	return nil
}

// elements reports whether fd is a repeated field of messages, strings or bytes, or a map.
func elements(fd protoreflect.FieldDescriptor) bool {
	if fd == nil {
		return false
	}
	if fd.IsMap() {
		return true
	}
	switch fd.Kind() {
	case protoreflect.MessageKind, protoreflect.StringKind, protoreflect.BytesKind:
		return fd.IsList()
	}
	return false
}

// filesystemOptions and processOptions are the options of the Connect clients of envd's services.
func filesystemOptions() []connect.ClientOption {
	return []connect.ClientOption{connect.WithCodec(boundedCodec{max: MaxRepeated}), connect.WithReadMaxBytes(MaxFilesystemMessage)}
}

func processOptions() []connect.ClientOption {
	return []connect.ClientOption{connect.WithCodec(boundedCodec{max: MaxRepeated}), connect.WithReadMaxBytes(MaxProcessMessage)}
}
