// argocd-lua runs an Argo CD health script on one Kubernetes object the way Argo CD runs a
// custom health check (argo-cd's util/lua): in gopher-lua, the Lua 5.1 interpreter Argo CD
// embeds, with only the package, base and table libraries and an os table that has time
// and date, the object as the global obj, a one-second limit, and the value the script
// returns as the result.
//
// Usage: argocd-lua SCRIPT-FILE < object.json
// Prints the returned table as one JSON object; exits 1 with the Lua error, or when the
// script returns something other than a table (Argo CD reports that as an error too).
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"time"

	lua "github.com/yuin/gopher-lua"
)

func main() {
	if len(os.Args) != 2 {
		fail("usage: argocd-lua SCRIPT-FILE < object.json")
	}
	script, err := os.ReadFile(os.Args[1])
	if err != nil {
		fail(err.Error())
	}
	var obj any
	if err := json.NewDecoder(os.Stdin).Decode(&obj); err != nil {
		fail("stdin is not a JSON object: " + err.Error())
	}
	L := argoState()
	defer L.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	L.SetContext(ctx)
	L.SetGlobal("obj", toLua(L, obj))
	if err := L.DoString(string(script)); err != nil {
		fail(err.Error())
	}
	tbl, ok := L.Get(-1).(*lua.LTable)
	if !ok {
		fail(fmt.Sprintf("the script returned %s, not a table", L.Get(-1).Type()))
	}
	out := map[string]any{}
	tbl.ForEach(func(k, v lua.LValue) { out[k.String()] = fromLua(v) })
	_ = json.NewEncoder(os.Stdout).Encode(out)
}

// argoState opens what Argo CD opens for a custom script (no string, math, io...).
func argoState() *lua.LState {
	L := lua.NewState(lua.Options{SkipOpenLibs: true})
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{{lua.LoadLibName, lua.OpenPackage}, {lua.BaseLibName, lua.OpenBase}, {lua.TabLibName, lua.OpenTable},
		{lua.OsLibName, lua.OpenOs}} {
		L.Push(L.NewFunction(lib.open))
		L.Push(lua.LString(lib.name))
		L.Call(1, 0)
	}
	full := L.GetGlobal(lua.OsLibName).(*lua.LTable)
	safe := L.NewTable()
	for _, name := range []string{"time", "date"} {
		safe.RawSetString(name, full.RawGetString(name))
	}
	L.SetGlobal(lua.OsLibName, safe)
	if loaded, ok := L.GetField(L.GetGlobal("package"), "loaded").(*lua.LTable); ok {
		loaded.RawSetString(lua.OsLibName, safe)
	}
	return L
}

// toLua turns decoded JSON into Lua values as Argo CD does: numbers are Lua numbers,
// arrays are sequences, null is nil.
func toLua(L *lua.LState, v any) lua.LValue {
	switch x := v.(type) {
	case map[string]any:
		t := L.CreateTable(0, len(x))
		for k, item := range x {
			t.RawSetString(k, toLua(L, item))
		}
		return t
	case []any:
		t := L.CreateTable(len(x), 0)
		for _, item := range x {
			t.Append(toLua(L, item))
		}
		return t
	case float64:
		return lua.LNumber(x)
	case string:
		return lua.LString(x)
	case bool:
		return lua.LBool(x)
	}
	return lua.LNil
}

func fromLua(v lua.LValue) any {
	switch x := v.(type) {
	case lua.LString:
		return string(x)
	case lua.LNumber:
		return float64(x)
	case lua.LBool:
		return bool(x)
	case *lua.LTable:
		m := map[string]any{}
		x.ForEach(func(k, item lua.LValue) { m[k.String()] = fromLua(item) })
		return m
	}
	return v.String()
}

func fail(msg string) {
	fmt.Fprintln(os.Stderr, "argocd-lua:", msg)
	os.Exit(1)
}
