package clustertest

import "testing"

func TestParseStatus(t *testing.T) {
	for _, tc := range []struct {
		name, json string
	}{
		{"meta.ClusterStatus", `{"node":"n2","leader_id":"n1","leader_addr":"127.0.0.1:7001","members":[
			{"id":"n1","addr":"127.0.0.1:7001","suffrage":"voter","state":"leader","term":3,"applied":42,"commit":42,"last_contact_ms":0},
			{"id":"n2","addr":"127.0.0.1:7002","suffrage":"voter","state":"follower","applied":41,"commit":42},
			{"id":"n3","addr":"127.0.0.1:7003","suffrage":"nonvoter","applied":0,"commit":0,"error":"timeout"}]}`},
		{"leader object", `{"leader":{"id":"n1","address":"127.0.0.1:7001"},"members":[
			{"id":"n1","address":"127.0.0.1:7001","role":"voter","applied_index":42},
			{"id":"n2","address":"127.0.0.1:7002","role":"voter","applied_index":41},
			{"id":"n3","address":"127.0.0.1:7003","role":"nonvoter"}]}`},
		{"leader address", `{"leader":"127.0.0.1:7001","servers":[
			{"id":"n1","addr":"127.0.0.1:7001","role":"Voter","applied":42},
			{"id":"n2","addr":"127.0.0.1:7002","role":"Voter","applied":41},
			{"id":"n3","addr":"127.0.0.1:7003","role":"Nonvoter"}]}`},
	} {
		st, err := parseStatus([]byte(tc.json))
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if st.Leader != "n1" || len(st.Members) != 3 || st.Members[0].Applied != 42 || st.Members[1].Addr != "127.0.0.1:7002" ||
			st.Members[0].Role != "voter" || st.Members[2].Role != "nonvoter" {
			t.Errorf("%s: parsed %+v", tc.name, st)
		}
	}
	if _, err := parseStatus([]byte("leader n1")); err == nil {
		t.Error("text output parsed as JSON")
	}
}
