// kstatus prints what sigs.k8s.io/cli-utils' kstatus library (the status rules Flux's
// kustomize-controller applies to custom resources for `wait` and `healthChecks`)
// computes for the objects on stdin: one JSON object, or a List as `kubectl get -o json`
// prints it. Output: one JSON line per object, {"name", "status", "message"}.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

func main() {
	data, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail(err)
	}
	var in unstructured.Unstructured
	if err := in.UnmarshalJSON(data); err != nil {
		fail(fmt.Errorf("stdin is not a Kubernetes object: %w", err))
	}
	objs := []unstructured.Unstructured{in}
	if in.IsList() {
		list, err := in.ToList()
		if err != nil {
			fail(err)
		}
		objs = list.Items
	}
	out := json.NewEncoder(os.Stdout)
	for i := range objs {
		res, err := status.Compute(&objs[i])
		if err != nil {
			fail(fmt.Errorf("%s: %w", objs[i].GetName(), err))
		}
		_ = out.Encode(map[string]string{"name": objs[i].GetName(), "status": string(res.Status), "message": res.Message})
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "kstatus:", err)
	os.Exit(2)
}
