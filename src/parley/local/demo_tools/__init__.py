"""parley's demo tools: a small MCP server for trying tool use and its approvals on one machine.

`python -m parley.local.demo_tools --data-dir DIR` speaks the Model Context Protocol over stdio
and offers five tools: `now` (the date and time in a time zone), `calculate` (exact arithmetic
with a real parser), and `add_note`, `list_notes`, `search_notes` (notes kept in
`DIR/notes.jsonl`). Their annotations are honest, so an MCP client can decide approvals from
them: only `add_note` changes anything, and it only ever adds.

They are safe to offer to any model: no network, no shell, no other process, and writes only
inside the data directory. Every input is bounded (expression size, nesting, result digits,
note and query lengths), and bad input comes back as a tool error, never a crashed server.

Modules: `expression` parses, `calculator` evaluates, `clock` tells the time, `notes` keeps the
notes file, `tools` declares the tools and runs them, `server` wires them to the SDK's stdio
server, `__main__` is the command line. May import: the standard library, `mcp`, and this
package; nothing else of parley.
"""
