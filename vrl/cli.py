def main():
    print("vrl")
