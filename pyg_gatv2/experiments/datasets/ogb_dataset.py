"""The OGB dataset class with its files checked; it imports ``ogb``, so
:mod:`pyg_gatv2.experiments.datasets.ogb` imports it only once ``ogb`` is
known to be there."""
import os
import shutil
import tempfile
from pathlib import Path

import torch
from ogb.nodeproppred import PygNodePropPredDataset
from torch import Tensor

from .ogb_files import (
    PYG_GLOBALS,
    SPLIT_FILES,
    OGBFileError,
    check_present,
    dataset_folder,
    first_bad_file,
    meta_info,
    raw_paths,
    refetch_hint,
)

__all__ = ['CheckedNodePropPredDataset']


class CheckedNodePropPredDataset(PygNodePropPredDataset):
    """A :class:`~ogb.nodeproppred.PygNodePropPredDataset` that checks its
    files, downloads without asking and loads with ``weights_only``."""
    def __init__(self, name: str, root: Path) -> None:
        meta = meta_info(name)
        self._url = meta['url']
        folder = dataset_folder(root, name)
        if folder.is_dir():
            # Else ogb would ask on stdin whether to delete the folder,
            # and PyG would download over a folder that lacks a file.
            check_present(folder, meta, self._url)
        processed = folder / 'processed' / 'geometric_data_processed.pt'
        had_processed = processed.is_file()
        try:
            with torch.serialization.safe_globals(PYG_GLOBALS):
                super().__init__(name, os.fspath(root))
        except OGBFileError:
            raise
        except Exception as err:
            if not had_processed:
                raise
            raise OGBFileError(
                f'{processed}: cannot be loaded ({type(err).__name__}: '
                f'{err}); delete {processed.parent} to process the raw '
                'files again') from err

    def download(self) -> None:
        root = Path(self.root)
        scratch = Path(tempfile.mkdtemp(prefix='.download-',
                                        dir=self.original_root))
        try:
            from ogb.utils.url import download_url, extract_zip
            extract_zip(download_url(self._url, os.fspath(scratch)),
                        os.fspath(scratch))
            unzipped = scratch / self.download_name
            if not unzipped.is_dir():
                raise OGBFileError(f'the archive has no top folder '
                                   f'{self.download_name}/')
            shutil.rmtree(root)
            shutil.move(os.fspath(unzipped), os.fspath(root))
        except Exception as err:
            shutil.rmtree(root, ignore_errors=True)
            raise OGBFileError(
                f'{self._url}: download failed ({type(err).__name__}: '
                f'{err}); without network, download it elsewhere and '
                f'unzip it so that its top folder becomes {root}') from err
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def process(self) -> None:
        paths = raw_paths(Path(self.root), self.meta_info)
        hint = refetch_hint(Path(self.root), self._url)
        try:
            super().process()
        except Exception as err:
            bad, why = first_bad_file(paths)
            if bad is not None:
                raise OGBFileError(
                    f'{bad}: not a readable gzipped CSV file '
                    f'({type(why).__name__}: {why}): the file is '
                    f'truncated or corrupt; {hint}') from err
            raise OGBFileError(
                f'{self.raw_dir}: the raw files of {self.name} do not '
                f'fit together ({type(err).__name__}: {err}); '
                f'{hint}') from err

    def official_split(self) -> dict[str, Tensor]:
        folder = Path(self.root) / 'split' / self.meta_info['split']
        paths = [folder / f'{part}.csv.gz' for part in SPLIT_FILES]
        hint = refetch_hint(Path(self.root), self._url)
        try:
            return self.get_idx_split()
        except Exception as err:
            bad, why = first_bad_file(paths)
            what = (f'{bad}: not a readable gzipped CSV file '
                    f'({type(why).__name__}: {why})') if bad else (
                        f'{folder}: the split cannot be read '
                        f'({type(err).__name__}: {err})')
            raise OGBFileError(f'{what}; {hint}') from err
