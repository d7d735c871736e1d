"""dqlr in napari: reader, writer, sample data (`layers`) and the Enhance and Estimate widgets
(`widgets`), declared to napari in `napari.yaml` (npe2). Installed with `pip install dqlr[napari]`.

Nothing is imported here, so napari loads each part only when it is used.
"""
