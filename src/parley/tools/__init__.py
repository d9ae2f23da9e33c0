"""parley as an MCP client: the tools of configured MCP servers, offered to models and called.

Modules: `config` reads `PARLEY_MCP_CONFIG`; `servers` runs one supervisor per server (stdio
child or streamable HTTP); `names` gives tools their provider-safe names; `pins` blocks tools
whose definition changed since approved; `arguments` checks a model's arguments against a
tool's schema; `output` turns results into capped text; `catalog` puts them together in
`ToolCatalog`; `demo` configures the demo tool server.

May import: the standard library, mcp, jsonschema, pydantic, parley.errors,
parley.providers.base and parley.providers.url_policy, parley.store; never parley.chat or
parley.api (checked by import-linter).
"""

from parley.tools.arguments import InvalidArguments
from parley.tools.catalog import CatalogDescription, CatalogTool, ServerRow, ToolCatalog, ToolNotFound, ToolRow
from parley.tools.config import McpConfig, load_config, parse_config
from parley.tools.demo import demo_config
from parley.tools.output import ToolOutput

__all__ = [
    "CatalogDescription",
    "CatalogTool",
    "InvalidArguments",
    "McpConfig",
    "ServerRow",
    "ToolCatalog",
    "ToolNotFound",
    "ToolOutput",
    "ToolRow",
    "demo_config",
    "load_config",
    "parse_config",
]
