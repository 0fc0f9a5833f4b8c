package state

import "testing"

// TestEnvsE2BVariables: commands get E2B's variables, which win over the user's of the same names.
func TestEnvsE2BVariables(t *testing.T) {
	d := New("user")
	if got := d.Envs(); got["E2B_SANDBOX"] != "true" || got["E2B_SANDBOX_ID"] != "" || len(got) != 1 {
		t.Fatalf("before /init: %v", got)
	}
	id, tpl := "sbx1", "base"
	d.Apply(Update{Envs: map[string]string{"A": "1", "E2B_SANDBOX_ID": "spoofed", "E2B_SANDBOX": "false"}, SandboxID: &id, TemplateID: &tpl})
	got := d.Envs()
	want := map[string]string{"A": "1", "E2B_SANDBOX": "true", "E2B_SANDBOX_ID": "sbx1", "E2B_TEMPLATE_ID": "base"}
	if len(got) != len(want) {
		t.Fatalf("envs %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Fatalf("envs %v, want %v", got, want)
		}
	}
	// A later /init with variables only keeps the ids.
	d.Apply(Update{Envs: map[string]string{"B": "2"}})
	if got := d.Envs(); got["E2B_SANDBOX_ID"] != "sbx1" || got["B"] != "2" || got["A"] != "1" {
		t.Fatalf("after a second /init: %v", got)
	}
}
