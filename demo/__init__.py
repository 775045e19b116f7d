"""`vrl demo`: a Gradio app in which a person watches HiCoGen's chain of synthesis work.

The demo imports the library; the library never imports the demo (the `vrl demo` command loads it
lazily). Importing this package loads neither Gradio nor a model.
"""
