-- Loads the ghost-text plugin once; call require('codecomplete').setup{} to change keys.
if vim.g.loaded_codecomplete then
  return
end
vim.g.loaded_codecomplete = true
require('codecomplete').setup(vim.g.codecomplete or {})
