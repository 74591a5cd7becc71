-- Ghost-text completions from the codecomplete language server.
--
-- Neovim 0.12+ has LSP inline completion built in: we enable it and map the accept key.
-- On 0.11 this module draws the first suggestion as virtual text (an extmark) while in
-- insert mode, accepts it with `accept_key` (else the key does what it normally does),
-- clears it when leaving insert mode or moving the cursor, and cancels outdated requests.
local M = {}

local ns = vim.api.nvim_create_namespace('codecomplete')
local config = {
  accept_key = '<Tab>',
  debounce_ms = 75,
  client_name = 'codecomplete',
  hl_group = 'Comment',
}
-- per buffer: { request = {client, id}, suggestion = {row, col, text}, timer }
local state = {}

local function buf_state(buf)
  state[buf] = state[buf] or {}
  return state[buf]
end

local function get_client(buf)
  return vim.lsp.get_clients({ bufnr = buf, name = config.client_name })[1]
end

--- Remove the ghost text and forget the suggestion.
function M.clear(buf)
  buf = buf or vim.api.nvim_get_current_buf()
  local s = buf_state(buf)
  s.suggestion = nil
  if vim.api.nvim_buf_is_valid(buf) then
    vim.api.nvim_buf_clear_namespace(buf, ns, 0, -1)
  end
end

local function cancel(buf)
  local s = buf_state(buf)
  if s.request then
    local client, id = s.request[1], s.request[2]
    pcall(function() client:cancel_request(id) end)
    s.request = nil
  end
end

local function show(buf, row, col, text)
  M.clear(buf)
  local lines = vim.split(text, '\n', { plain = true })
  local opts = {
    virt_text = { { lines[1], config.hl_group } },
    virt_text_pos = 'inline',
    hl_mode = 'combine',
  }
  if #lines > 1 then
    opts.virt_lines = {}
    for i = 2, #lines do
      table.insert(opts.virt_lines, { { lines[i], config.hl_group } })
    end
  end
  vim.api.nvim_buf_set_extmark(buf, ns, row, col, opts)
  buf_state(buf).suggestion = { row = row, col = col, text = text }
end

--- Ask the server for a suggestion at the cursor (cancelling any older request).
function M.request(buf)
  buf = buf or vim.api.nvim_get_current_buf()
  local client = get_client(buf)
  if not client then
    return
  end
  cancel(buf)
  local win = vim.api.nvim_get_current_win()
  local cursor = vim.api.nvim_win_get_cursor(win)
  local params = vim.lsp.util.make_position_params(win, client.offset_encoding)
  params.context = { triggerKind = 2 } -- automatic
  local changedtick = vim.api.nvim_buf_get_changedtick(buf)
  local ok, id = client:request('textDocument/inlineCompletion', params, function(err, result)
    local s = buf_state(buf)
    s.request = nil
    if err or not result then
      return
    end
    -- Outdated: the text or the cursor changed since the request went out.
    if vim.api.nvim_buf_get_changedtick(buf) ~= changedtick
      or vim.api.nvim_get_mode().mode:sub(1, 1) ~= 'i'
      or not vim.deep_equal(vim.api.nvim_win_get_cursor(0), cursor) then
      return
    end
    local items = result.items or result
    local first = items and items[1]
    local text = first and first.insertText
    if type(text) == 'table' then
      text = text.value
    end
    if text and text ~= '' then
      show(buf, cursor[1] - 1, cursor[2], text)
    end
  end, buf)
  if ok then
    buf_state(buf).request = { client, id }
  end
end

--- Insert the shown suggestion at the cursor; returns false when there was none.
function M.accept(buf)
  buf = buf or vim.api.nvim_get_current_buf()
  local s = buf_state(buf).suggestion
  if not s then
    return false
  end
  M.clear(buf)
  local lines = vim.split(s.text, '\n', { plain = true })
  vim.api.nvim_buf_set_text(buf, s.row, s.col, s.row, s.col, lines)
  local last_row = s.row + #lines - 1
  local last_col = (#lines == 1 and s.col or 0) + #lines[#lines]
  vim.api.nvim_win_set_cursor(0, { last_row + 1, last_col })
  return true
end

function M.visible(buf)
  return buf_state(buf or vim.api.nvim_get_current_buf()).suggestion ~= nil
end

local function schedule_request(buf)
  local s = buf_state(buf)
  if s.timer then
    s.timer:stop()
  else
    s.timer = vim.uv.new_timer()
  end
  s.timer:start(config.debounce_ms, 0, vim.schedule_wrap(function()
    if vim.api.nvim_buf_is_valid(buf) and vim.api.nvim_get_mode().mode:sub(1, 1) == 'i' then
      M.request(buf)
    end
  end))
end

local function setup_fallback()
  local group = vim.api.nvim_create_augroup('codecomplete', { clear = true })
  vim.api.nvim_create_autocmd('TextChangedI', {
    group = group,
    callback = function(ev)
      M.clear(ev.buf)
      if get_client(ev.buf) then
        schedule_request(ev.buf)
      end
    end,
  })
  vim.api.nvim_create_autocmd('CursorMovedI', {
    group = group,
    callback = function(ev)
      local s = buf_state(ev.buf).suggestion
      local cur = vim.api.nvim_win_get_cursor(0)
      if s and (cur[1] - 1 ~= s.row or cur[2] ~= s.col) then
        M.clear(ev.buf)
        cancel(ev.buf)
      end
    end,
  })
  vim.api.nvim_create_autocmd({ 'InsertLeave', 'BufLeave' }, {
    group = group,
    callback = function(ev)
      cancel(ev.buf)
      M.clear(ev.buf)
    end,
  })
  vim.keymap.set('i', config.accept_key, function()
    if M.visible() then
      vim.schedule(function() M.accept() end)
      return ''
    end
    return vim.api.nvim_replace_termcodes(config.accept_key, true, false, true)
  end, { expr = true, replace_keycodes = false, desc = 'codecomplete: accept suggestion' })
end

function M.setup(opts)
  config = vim.tbl_extend('force', config, opts or {})
  if vim.lsp.inline_completion and vim.lsp.inline_completion.enable then
    -- Neovim 0.12+: built-in ghost text from textDocument/inlineCompletion.
    vim.lsp.inline_completion.enable(true)
    vim.keymap.set('i', config.accept_key, function()
      if not vim.lsp.inline_completion.get() then
        return vim.api.nvim_replace_termcodes(config.accept_key, true, false, true)
      end
    end, { expr = true, replace_keycodes = false, desc = 'codecomplete: accept suggestion' })
  else
    setup_fallback()
  end
end

M._config = function() return config end
return M
