-- Ghost-text completions from the codecomplete language server.
--
-- Neovim 0.12+ has LSP inline completion built in: we enable it and map the accept key.
-- On 0.11 this module draws a suggestion as virtual text (an extmark) while in insert
-- mode, accepts it whole with `accept_key`, a word with `accept_word_key`, a line with
-- `accept_line_key` (the rest stays shown; each key does what it normally does when
-- nothing is shown), cycles through the server's candidates with `next_key`/`prev_key`,
-- keeps the rest shown at once while the user types exactly what is suggested (no
-- request, no flicker), clears it when leaving insert mode or moving the cursor, and
-- cancels outdated requests.
local M = {}

local ns = vim.api.nvim_create_namespace('codecomplete')
local fallback_for          -- defined below
local config = {
  accept_key = '<Tab>',
  accept_word_key = '<M-Right>',
  accept_line_key = '<M-C-Right>',
  next_key = '<M-]>',
  prev_key = '<M-[>',
  debounce_ms = 75,
  client_name = 'codecomplete',
  hl_group = 'Comment',
}
-- per buffer: { request = {client, id}, timer,
--   suggestion = {row, col, text, tick, items, index} }: items are the candidates'
--   texts from the cursor at (row, col); tick is the buffer's changedtick when shown
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

--- Forget a buffer: cancel its request, close its timer, drop its state.
function M.forget(buf)
  local s = state[buf]
  if not s then
    return
  end
  cancel(buf)
  if s.timer then
    s.timer:stop()
    if not s.timer:is_closing() then
      s.timer:close()
    end
  end
  state[buf] = nil
end

--- How many buffers have state kept (tests: wiped buffers leave none).
function M._tracked()
  return vim.tbl_count(state)
end

local function show(buf, row, col, text, items, index)
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
  buf_state(buf).suggestion = { row = row, col = col, text = text,
    tick = vim.api.nvim_buf_get_changedtick(buf), items = items or { text },
    index = index or 1 }
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
    local texts = {}
    for _, item in ipairs(result.items or result or {}) do
      local text = item.insertText
      if type(text) == 'table' then
        text = text.value
      end
      if type(text) == 'string' and text ~= '' then
        table.insert(texts, text)
      end
    end
    if #texts > 0 then
      show(buf, cursor[1] - 1, cursor[2], texts[1], texts, 1)
    end
  end, buf)
  if ok then
    buf_state(buf).request = { client, id }
  end
end

function M.visible(buf)
  return buf_state(buf or vim.api.nvim_get_current_buf()).suggestion ~= nil
end

--- The candidates after `taken` (text accepted or typed from the suggestion's start):
--- those that began with it and have more, cut after it; and which one is shown.
local function remaining(s, taken)
  local items, index = {}, 1
  for i, item in ipairs(s.items) do
    if item:sub(1, #taken) == taken and #item > #taken then
      table.insert(items, item:sub(#taken + 1))
      if i == s.index then
        index = #items
      end
    end
  end
  return items, index
end

--- Insert `part` (the start of the shown suggestion) at its place and put the cursor
--- after it; with `keep_rest`, the rest stays shown there with no new request.
local function take(buf, part, keep_rest)
  local s = buf_state(buf).suggestion
  local lines = vim.split(part, '\n', { plain = true })
  M.clear(buf)
  vim.api.nvim_buf_set_text(buf, s.row, s.col, s.row, s.col, lines)
  local row = s.row + #lines - 1
  local col = (#lines == 1 and s.col or 0) + #lines[#lines]
  vim.api.nvim_win_set_cursor(0, { row + 1, col })
  local items, index = remaining(s, part)
  if keep_rest and #items > 0 then
    show(buf, row, col, items[index], items, index)
  end
end

--- Insert the part of the shown suggestion that `part_of(text)` picks (the rest stays
--- shown with `keep_rest`); false when nothing is shown.
local function accept_part(buf, part_of, keep_rest)
  buf = buf or vim.api.nvim_get_current_buf()
  local s = buf_state(buf).suggestion
  if not s then
    return false
  end
  take(buf, part_of(s.text), keep_rest)
  return true
end

local function next_word(text)
  return text:match('^%s*[%w_]+') or text:match('^%s*[^%w_%s]+') or text:match('^%s+')
    or text
end

--- Insert the whole shown suggestion at the cursor; returns false when there was none.
function M.accept(buf)
  return accept_part(buf, function(text) return text end, false)
end

--- Accept the suggestion's next word (with the blanks before it); false when none shown.
function M.accept_word(buf)
  return accept_part(buf, next_word, true)
end

--- Accept the suggestion up to and including its first line end; false when none shown.
function M.accept_line(buf)
  return accept_part(buf, function(text) return text:match('^[^\n]*\n?') end, true)
end

--- Show the next (step 1) or previous (step -1) candidate; false when there is no other.
function M.cycle(step, buf)
  buf = buf or vim.api.nvim_get_current_buf()
  local s = buf_state(buf).suggestion
  if not s or #s.items < 2 then
    return false
  end
  local index = (s.index - 1 + step) % #s.items + 1
  show(buf, s.row, s.col, s.items[index], s.items, index)
  return true
end

--- After a change: when the user typed exactly the start of the shown suggestion, show
--- the rest at once and return true (no request, no flicker).
local function typed_through(buf)
  local s = buf_state(buf).suggestion
  if not s then
    return false
  end
  local cursor = vim.api.nvim_win_get_cursor(0)
  if cursor[1] - 1 ~= s.row or cursor[2] <= s.col then
    return false
  end
  local line = vim.api.nvim_buf_get_lines(buf, s.row, s.row + 1, false)[1] or ''
  local typed = line:sub(s.col + 1, cursor[2])
  if #typed >= #s.text or s.text:sub(1, #typed) ~= typed then
    return false
  end
  local items, index = remaining(s, typed)
  show(buf, s.row, cursor[2], items[index], items, index)
  return true
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

--- What `key` did in insert mode before we mapped it, as a function returning the keys
--- to feed: the user's own mapping (an expression such as `pumvisible() ? "<C-n>" :
--- "<Tab>"`, a Lua callback, or plain keys), else the key itself. With no suggestion
--- shown, our mapping does exactly that: indent, move in the completion menu, jump in a
--- snippet.
fallback_for = function(key)
  local raw = vim.api.nvim_replace_termcodes(key, true, false, true)
  local prev = vim.fn.maparg(key, 'i', false, true)
  if type(prev) ~= 'table' or vim.tbl_isempty(prev)
    or (prev.desc or ''):find('^codecomplete:') then
    return function() return raw end
  end
  if prev.callback then
    return function()
      local out = prev.callback()
      if prev.expr == 1 then
        return prev.replace_keycodes == 1 and vim.api.nvim_replace_termcodes(out or '', true,
          false, true) or (out or '')
      end
      return ''
    end
  end
  if prev.expr == 1 then
    return function() return vim.api.nvim_eval(prev.rhs) end
  end
  local keys = vim.api.nvim_replace_termcodes(prev.rhs or key, true, false, true)
  return function() return keys end
end

local function setup_fallback()
  local group = vim.api.nvim_create_augroup('codecomplete', { clear = true })
  vim.api.nvim_create_autocmd('TextChangedI', {
    group = group,
    callback = function(ev)
      local s = buf_state(ev.buf).suggestion
      if s and s.tick == vim.api.nvim_buf_get_changedtick(ev.buf) then
        return              -- our own insertion (accept word/line): already shown
      end
      if typed_through(ev.buf) then
        cancel(ev.buf)
        if buf_state(ev.buf).timer then
          buf_state(ev.buf).timer:stop()
        end
        return
      end
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
      -- A change moves the cursor too: TextChangedI decides then; only a move alone clears.
      if s and s.tick == vim.api.nvim_buf_get_changedtick(ev.buf)
        and (cur[1] - 1 ~= s.row or cur[2] ~= s.col) then
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
  -- A wiped or deleted buffer: its request cancelled, its timer closed, its state gone
  -- (a long session opens thousands of buffers).
  vim.api.nvim_create_autocmd({ 'BufWipeout', 'BufDelete' }, {
    group = group,
    callback = function(ev)
      M.forget(ev.buf)
    end,
  })
  local function map(key, action, desc)
    if not key or key == '' then
      return
    end
    local otherwise = fallback_for(key)
    vim.keymap.set('i', key, function()
      if M.visible() then
        vim.schedule(action)
        return ''
      end
      return otherwise()
    end, { expr = true, replace_keycodes = false, desc = 'codecomplete: ' .. desc })
  end
  map(config.accept_key, function() M.accept() end, 'accept suggestion')
  map(config.accept_word_key, function() M.accept_word() end, 'accept a word')
  map(config.accept_line_key, function() M.accept_line() end, 'accept a line')
  map(config.next_key, function() M.cycle(1) end, 'next suggestion')
  map(config.prev_key, function() M.cycle(-1) end, 'previous suggestion')
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
M._suggestion = function(buf) return buf_state(buf or vim.api.nvim_get_current_buf()).suggestion end
return M
