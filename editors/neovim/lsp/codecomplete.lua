-- codecomplete language server for Neovim 0.11+ (vim.lsp.config / vim.lsp.enable).
--
-- With this folder on 'runtimepath':
--   vim.lsp.enable('codecomplete')
-- Override anything with vim.lsp.config('codecomplete', { ... }), for example
--   vim.lsp.config('codecomplete', { cmd = { '/path/to/codecomplete/.venv/bin/server' } })
-- Settings use the server's names (all of them are listed in editors/neovim/README.md):
-- temperature, top_p, max_tokens, candidates, context_tokens, enable, comments, strings,
-- workspace_context, workspace_context_tokens, rerank, memory, memory_weight, seed,
-- multiline, python.
local settings = {
  temperature = 0,
  top_p = 0.95,
  max_tokens = 64,
  enable = true,
  comments = true,
  strings = true,
  workspace_context = false,
  memory = true,
}

---@type vim.lsp.Config
return {
  cmd = vim.g.codecomplete_cmd or { 'server' },
  filetypes = { 'python' },
  root_markers = { 'pyproject.toml', 'setup.py', 'setup.cfg', '.git' },
  init_options = settings,
  settings = { codecomplete = settings },
  -- UTF-8 positions: Neovim's native unit, and the server supports it.
  capabilities = { general = { positionEncodings = { 'utf-8', 'utf-16' } } },
}
