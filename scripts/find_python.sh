#!/usr/bin/env sh
# Print the path of a Python interpreter of version $1 (e.g. 3.13): the one the Lambda Runtime
# in template.yaml names, so tests run on what ships. Looks on PATH, then in pyenv's versions.
want="$1"
for candidate in "python$want" ; do
  path=$(command -v "$candidate" 2>/dev/null) || continue
  if "$path" -c "import sys; sys.exit(f'{sys.version_info[0]}.{sys.version_info[1]}' != '$want')" 2>/dev/null; then
    echo "$path"; exit 0
  fi
done
root=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")
for path in "$root"/versions/"$want".*/bin/python"$want"; do
  [ -x "$path" ] && { echo "$path"; exit 0; }
done
echo "Python $want not found: install it (pyenv install $want) or set PYTHON=/path/to/python$want" >&2
exit 1
