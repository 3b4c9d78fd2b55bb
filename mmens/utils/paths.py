"""Checks of the paths that a command line names, made before any work is done with them.

A tool that reads for minutes and then finds its output directory missing ends in a
traceback and loses the work: the tools call these first, and each mistake is one
``ValueError`` naming the argument. stdlib only (the tools check before heavy imports).
"""
import os
import os.path as osp
from typing import Sequence


def check_input_file(path: str, what: str, expected: str = 'a file') -> None:
    """A ``ValueError`` naming ``what`` (e.g. ``'--ann'``) unless ``path`` is an existing,
    readable file; ``expected`` says what a directory should have been instead."""
    if osp.isdir(path):
        raise ValueError(f'{what} {path} is a directory, not {expected}')
    if not osp.isfile(path):  # missing, or a link to nothing
        raise ValueError(f'{what} {path} does not exist')
    if not os.access(path, os.R_OK):
        raise ValueError(f'{what} {path} is not readable')


def check_member_files(ann: str, preds: Sequence[str]) -> None:
    """``--ann`` (a COCO annotation file) and every ``--preds`` file (COCO-results, one per
    member) of a file tool, each checked by :func:`check_input_file`."""
    check_input_file(ann, '--ann', 'a COCO annotation file')
    for path in preds:
        check_input_file(path, '--preds', 'a COCO-results JSON file (one file per member, '
                         'e.g. DIR/*.json)')


def check_output_dir(path: str, what: str) -> None:
    """A ``ValueError`` naming ``what`` unless ``path`` is a writable directory or can be
    made one (its first existing ancestor is a writable directory)."""
    _check_creatable_dir(path, f'{what} {path}')


def check_output_file(path: str, what: str) -> None:
    """A ``ValueError`` naming ``what`` unless a file can be written at ``path``: an
    existing writable file, or a new file in a directory that exists or can be made."""
    if osp.isdir(path):
        raise ValueError(f'{what} {path} is a directory, not a file path')
    if osp.exists(path):
        if not os.access(path, os.W_OK):
            raise ValueError(f'{what} {path} is not writable')
        return
    _check_creatable_dir(osp.dirname(osp.abspath(path)), f'{what} {path}')


def _check_creatable_dir(directory: str, label: str) -> None:
    existing = osp.abspath(directory)
    while not osp.lexists(existing):  # '/' exists: the loop ends
        existing = osp.dirname(existing)
    if not osp.isdir(existing):
        raise ValueError(f'{label}: {existing} is not a directory')
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f'{label}: directory {existing} is not writable')
