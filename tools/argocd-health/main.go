// Command argocd-health runs Argo CD's own health engine (github.com/argoproj/argo-cd/v3/util/lua, the code the
// application controller runs for a resource.customizations health.lua) on objects, for gptops' tests.
//
// Usage: argocd-health SCRIPT.lua < objects.json
//
// stdin is a JSON list of objects (as `kubectl get -o json` prints them); stdout is a JSON list with one
// {"status", "message", "error"} per object. The script runs as Argo CD runs a custom health check that does not set
// useOpenLibs: in a fresh Lua state with only the package, base, table, string, math and coroutine libraries open.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/argoproj/argo-cd/v3/util/lua"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

type result struct {
	Status  string `json:"status"`
	Message string `json:"message"`
	Error   string `json:"error"`
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: argocd-health SCRIPT.lua < objects.json")
		os.Exit(2)
	}
	script, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	input, err := io.ReadAll(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var objects []map[string]any
	if err := json.Unmarshal(input, &objects); err != nil {
		fmt.Fprintln(os.Stderr, "stdin is not a JSON list of objects:", err)
		os.Exit(2)
	}
	vm := lua.VM{UseOpenLibs: false}
	out := make([]result, 0, len(objects))
	for _, obj := range objects {
		hs, err := vm.ExecuteHealthLua(&unstructured.Unstructured{Object: obj}, string(script))
		switch {
		case err != nil:
			out = append(out, result{Error: err.Error()})
		case hs == nil:
			out = append(out, result{Error: "the script returned no health status"})
		default:
			out = append(out, result{Status: string(hs.Status), Message: hs.Message})
		}
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
