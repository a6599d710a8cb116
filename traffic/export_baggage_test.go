package traffic

// ReadMember exposes readMember to the fuzz tests: the key, the size on the wire and whether
// OpenTelemetry's Parse would accept the list-member.
func ReadMember(seg string) (key string, size int, ok bool) {
	m, ok := readMember(seg)
	return m.key, m.size, ok
}
